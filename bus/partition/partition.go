package partition

import (
	"context"
	"hash/fnv"
	"log/slog"
	"slices"
	"time"
)

// Of is the partition of an ordering key among n (n ≥ 1).
func Of(key string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// Leases is the store the partitions are leased from. Every method is
// one round trip or a few; errors are the store's.
type Leases interface {
	// Join marks member alive for ttl and returns every live member,
	// itself included.
	Join(ctx context.Context, member string, ttl time.Duration) ([]string, error)
	// Acquire takes partition p for member for ttl, or renews it when
	// member holds it already. It reports false when another member
	// holds it.
	Acquire(ctx context.Context, p int, member string, ttl time.Duration) (bool, error)
	// Release gives p up, if member holds it.
	Release(ctx context.Context, p int, member string) error
	// Leave marks member gone, so that the others rebalance at once.
	Leave(ctx context.Context, member string) error
}

// Consume starts consuming partition p and returns the function that
// stops it; stop returns after the messages of p this process released
// have settled (or its drain timeout passed), so that the next owner
// starts after them. On an error the lease is released and the
// partition tried again in a later round.
type Consume func(p int) (stop func(), err error)

// Config tunes Run.
type Config struct {
	// Partitions is the number of partitions (≥ 1).
	Partitions int
	// Member names this process; it must be unique among live workers.
	Member string
	// TTL is how long a lease lasts without renewal: the time a dead
	// worker's partitions wait before another worker takes them over.
	// Leases are renewed every TTL/3.
	TTL time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
	// Acquired, when set, runs once a partition's lease is taken and
	// before the partition is consumed: no process consumes it then, so
	// state kept per partition (the router's parked entities) can be
	// read fresh from its store. An error gives the lease up; a later
	// round tries again.
	Acquired func(ctx context.Context, p int) error
}

// opTimeout bounds one store call of a round.
const opTimeout = 5 * time.Second

// Run leases this process's share of the partitions and consumes them
// until ctx ends; then it stops every partition and releases its leases.
//
// The share: the live members, sorted, deal the partitions round-robin
// (partition p goes to members[p mod len]). Every worker computes the
// same deal from the same member list, so the workers converge on it;
// while they do, a partition moves only after its old owner stopped it
// and released it (or its lease ran out), never to two at once.
func Run(ctx context.Context, l Leases, c Config, consume Consume) {
	logger := c.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &runner{l: l, c: c, consume: consume, logger: logger,
		owned: map[int]*lease{}}
	tick := time.NewTicker(max(c.TTL/3, 10*time.Millisecond))
	defer tick.Stop()
	for {
		r.round(ctx)
		select {
		case <-ctx.Done():
			r.stopAll()
			return
		case <-tick.C:
		}
	}
}

type lease struct {
	stop    func()
	renewed time.Time
	// leaving is closed once stop returned, when the partition is being
	// given up (stop runs on its own goroutine: a drain may take longer
	// than a round); release says whether to release the lease then.
	leaving chan struct{}
	release bool
}

type runner struct {
	l       Leases
	c       Config
	consume Consume
	logger  *slog.Logger
	owned   map[int]*lease
}

// round is one pass: join, then for each partition keep, take or give
// it up as the deal says.
func (r *runner) round(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	now := time.Now()
	jctx, cancel := context.WithTimeout(ctx, opTimeout)
	members, err := r.l.Join(jctx, r.c.Member, r.c.TTL)
	cancel()
	if err != nil || !slices.Contains(members, r.c.Member) {
		r.logger.Warn("partition: cannot renew membership; keeping the partitions held while their leases last", "err", err)
		members = nil
	}
	slices.Sort(members)
	for p := range r.c.Partitions {
		mine := len(members) > 0 && members[p%len(members)] == r.c.Member
		held := r.owned[p]
		switch {
		case held != nil && held.leaving != nil:
			r.leave(ctx, p, held, now)
		case held != nil && !mine && members != nil:
			r.logger.Info("partition: giving up to rebalance", "partition", p)
			r.stop(p, held, true)
			r.renew(ctx, p, held, now)
		case held != nil:
			r.renew(ctx, p, held, now)
		case mine:
			r.take(ctx, p, now)
		}
	}
}

// leave renews the lease of a partition being stopped until it stopped,
// then releases it, so the next owner starts after every message of p
// this process released has settled.
func (r *runner) leave(ctx context.Context, p int, held *lease, now time.Time) {
	select {
	case <-held.leaving:
	default:
		if held.release {
			r.renew(ctx, p, held, now)
		}
		return
	}
	delete(r.owned, p)
	if !held.release {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	if err := r.l.Release(rctx, p, r.c.Member); err != nil {
		r.logger.Warn("partition: release failed; the lease runs out by itself", "partition", p, "err", err)
		return
	}
	r.logger.Info("partition: released", "partition", p)
}

func (r *runner) renew(ctx context.Context, p int, held *lease, now time.Time) {
	actx, cancel := context.WithTimeout(ctx, opTimeout)
	ok, err := r.l.Acquire(actx, p, r.c.Member, r.c.TTL)
	cancel()
	switch {
	case err == nil && ok:
		held.renewed = now
	case err == nil:
		// Another worker holds it: the lease ran out (this process
		// stalled longer than the TTL). Stop at once.
		r.logger.Warn("partition: lease lost to another worker; stopping the partition", "partition", p)
		r.stop(p, held, false)
	case now.Sub(held.renewed) > r.c.TTL/2:
		// The lease may run out before the store answers again: stop
		// before another worker can take the partition.
		r.logger.Warn("partition: cannot renew the lease; stopping the partition", "partition", p, "err", err)
		r.stop(p, held, false)
	}
}

func (r *runner) take(ctx context.Context, p int, now time.Time) {
	actx, cancel := context.WithTimeout(ctx, opTimeout)
	ok, err := r.l.Acquire(actx, p, r.c.Member, r.c.TTL)
	cancel()
	if err != nil {
		r.logger.Warn("partition: cannot acquire", "partition", p, "err", err)
		return
	}
	if !ok {
		return // its owner gives it up, or its lease runs out, soon
	}
	if r.c.Acquired != nil {
		if err := r.c.Acquired(ctx, p); err != nil {
			r.logger.Warn("partition: acquired, but its hook failed; releasing it", "partition", p, "err", err)
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
			defer cancel()
			_ = r.l.Release(rctx, p, r.c.Member)
			return
		}
	}
	stop, err := r.consume(p)
	if err != nil {
		r.logger.Warn("partition: cannot consume; releasing it", "partition", p, "err", err)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
		defer cancel()
		_ = r.l.Release(rctx, p, r.c.Member)
		return
	}
	r.logger.Info("partition: acquired", "partition", p)
	r.owned[p] = &lease{stop: stop, renewed: now}
}

// stop starts stopping p on a goroutine of its own (once).
func (r *runner) stop(p int, held *lease, release bool) {
	if held.leaving != nil {
		held.release = held.release && release
		return
	}
	held.leaving, held.release = make(chan struct{}), release
	go func() {
		defer close(held.leaving)
		held.stop()
	}()
}

// stopAll stops every partition at once, waits, and releases the leases.
func (r *runner) stopAll() {
	for p, held := range r.owned {
		r.stop(p, held, true)
	}
	for p, held := range r.owned {
		<-held.leaving
		r.leave(context.Background(), p, held, time.Now())
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_ = r.l.Leave(ctx, r.c.Member)
}
