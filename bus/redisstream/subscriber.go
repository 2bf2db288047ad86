package redisstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/internal/lazyctx"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/bus/lanes"
	"github.com/millrace/millrace/bus/partition"
)

const (
	// ackBatch bounds the ids of one XACK; touchChunk those of one XCLAIM.
	ackBatch   = 1000
	touchChunk = 500
	// claimRounds bounds the XAUTOCLAIM calls of one sweep.
	claimRounds = 10
	// opTimeout bounds one XACK, XCLAIM or XAUTOCLAIM.
	opTimeout = 5 * time.Second
	// staleConsumer is how long a consumer with nothing pending may stay
	// silent before it is removed from the group. A live one reads every
	// Block, so this only removes the names of processes long gone.
	staleConsumer = time.Hour
	// pruneEvery is how often the group's consumers are checked.
	pruneEvery = 10 * time.Minute
)

// Subscriber consumes topics through a consumer group. It is safe for
// concurrent use and does not own the client.
type Subscriber struct {
	client redis.UniversalClient
	cfg    Config
	logger *slog.Logger
	// readBack: the consumer name was configured, so it is stable across
	// restarts and its pending entries are this process's to read back.
	readBack bool

	// acquired runs on each partition taken (OnAcquire).
	acquired bus.AcquireHook

	mu     sync.Mutex
	closed bool
	stops  []func() // one per Subscribe, each safe to call twice
}

var (
	_ message.Subscriber           = (*Subscriber)(nil)
	_ message.SubscribeInitializer = (*Subscriber)(nil)
)

// NewSubscriber returns a subscriber on client. When cfg.Consumer is set,
// each subscription first reads back the entries pending on that name
// (left by an earlier run); a name must then be used by one subscription
// of a stream at a time. With the default name, which changes with every
// process, such entries come back through claiming after ClaimIdle.
//
// With cfg.Partitions the default name also gets a random suffix: the
// name is the subscriber's lease member, and two subscribers of one
// process (tests, tools) must lease as two workers.
func NewSubscriber(client redis.UniversalClient, cfg Config, logger *slog.Logger) *Subscriber {
	readBack := cfg.Consumer != ""
	if cfg.Consumer == "" && cfg.Partitions > 0 {
		cfg.Consumer = DefaultConsumer() + "-" + watermill.NewShortUUID()[:8]
	}
	cfg.SetDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Subscriber{client: client, cfg: cfg, logger: logger, readBack: readBack}
}

// Config returns the subscriber's config, defaults filled.
func (s *Subscriber) Config() Config { return s.cfg }

// SubscribeInitialize creates topic's stream and consumer group, or
// every partition's with Config.Partitions.
func (s *Subscriber) SubscribeInitialize(topic string) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return s.ensureGroups(ctx, topic)
}

// ensureGroups creates the group on topic's stream, or on each of its
// partitions' streams in one pipeline.
func (s *Subscriber) ensureGroups(ctx context.Context, topic string) error {
	if s.cfg.Partitions <= 0 {
		return ensureGroup(ctx, s.client, s.cfg.Stream(topic), s.cfg.Group)
	}
	pipe := s.client.Pipeline()
	cmds := make([]*redis.StatusCmd, s.cfg.Partitions)
	for p := range cmds {
		cmds[p] = pipe.XGroupCreateMkStream(ctx, s.cfg.partitionStream(topic, p), s.cfg.Group, "0")
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
	for p, cmd := range cmds {
		if err := cmd.Err(); err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
			return fmt.Errorf("redisstream: create group %s on %s: %w", s.cfg.Group, s.cfg.partitionStream(topic, p), err)
		}
	}
	return nil
}

// ensureGroup creates the group at the start of the stream (a new group
// reads what is already there), and the stream if it does not exist.
func ensureGroup(ctx context.Context, client redis.UniversalClient, stream, group string) error {
	err := client.XGroupCreateMkStream(ctx, stream, group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("redisstream: create group %s on %s: %w", group, stream, err)
	}
	return nil
}

// Subscribe starts consuming topic: its own pending entries first (see
// NewSubscriber), then new ones. With Config.Partitions it consumes the
// partitions this subscriber leases instead (see subscribePartitions).
// The channel closes after ctx ends or Close is called and every released
// message has settled (or DrainTimeout passed).
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	// With partitions, every subscription ensures its partition's group
	// again when it starts (Redis may have lost it since); this checks
	// that Redis answers, as without.
	if err := s.ensureGroups(ctx, topic); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("redisstream: subscriber closed")
	}
	var (
		out     <-chan *message.Message
		stop    func()
		stopped <-chan struct{}
	)
	if s.cfg.Partitions > 0 {
		out, stop, stopped = s.subscribePartitions(ctx, topic)
	} else {
		sub := s.start(ctx, s.cfg.Stream(topic), nil, partition.Share{}, false)
		out, stop, stopped = sub.own, sub.stop, sub.stopped
	}
	s.stops = append(s.stops, stop)
	go func() {
		select {
		case <-ctx.Done():
			stop()
		case <-stopped:
		}
	}()
	return out, nil
}

// subscribePartitions consumes the partitions of topic that this
// subscriber leases (package partition, leases in Redis, Consumer as the
// member name), each with a subscription of its own on its stream, into
// one channel. The subscriptions share MaxInFlight. A subscription that
// starts on a partition first takes over every entry pending in the
// group on its stream, whichever consumer holds it, and releases them
// in ID order before it reads new entries: what the partition's previous
// owner left unacked runs before the later events of its keys.
//
// The returned stop ends the leasing, which stops every partition (their
// released messages settle, their acks are sent) and releases the
// leases; stopped is closed after it, and after the channel.
func (s *Subscriber) subscribePartitions(ctx context.Context, topic string) (out <-chan *message.Message, stop func(), stopped <-chan struct{}) {
	base := context.WithoutCancel(ctx)
	// The partitions share the bounds of one subscription: in flight,
	// held in the lanes, and read ahead.
	return partition.FanIn(ctx, partition.NewRedisLeases(s.client, s.cfg.leasePrefix(topic)), partition.FanInConfig{
		Config: partition.Config{
			Partitions: s.cfg.Partitions,
			Member:     s.cfg.Consumer,
			TTL:        s.cfg.PartitionTTL,
			Logger:     s.logger.With("stream", s.cfg.Stream(topic), "group", s.cfg.Group, "consumer", s.cfg.Consumer),
			Acquired:   s.acquired.Bind(s.cfg.Partitions),
		},
		MaxInFlight: s.cfg.MaxInFlight,
		MaxBuffered: s.cfg.maxBuffered(),
		ReadAhead:   int(s.cfg.Batch),
	}, func(p int, sh partition.Share) (func(), error) {
		streams := []string{s.cfg.partitionStream(topic, p)}
		if p == 0 {
			// The owner of partition 0 also reads the topic's
			// unpartitioned stream: what was written there before
			// partitions were turned on, or by a producer that writes
			// around millrace, is delivered rather than stranded.
			streams = append(streams, s.cfg.Stream(topic))
		}
		var subs []*subscription
		for _, stream := range streams {
			gctx, cancel := context.WithTimeout(base, opTimeout)
			err := ensureGroup(gctx, s.client, stream, s.cfg.Group)
			cancel()
			if err != nil {
				for _, sub := range subs {
					sub.stop()
				}
				return nil, err
			}
			subs = append(subs, s.start(ctx, stream, sh.Out, sh, true))
		}
		return func() {
			var wg sync.WaitGroup
			for _, sub := range subs {
				wg.Go(sub.stop)
			}
			// Nothing of the partition is sent on sh.Out after this.
			wg.Wait()
		}, nil
	})
}

// Close stops every subscription; released messages get DrainTimeout to
// settle, the others stay pending in the group.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	stops := s.stops
	s.stops, s.closed = nil, true
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, stop := range stops {
		wg.Go(stop)
	}
	wg.Wait()
	return nil
}

// subscription is one stream's consumption: a topic's, or one
// partition's. Its goroutines: the reader (XREADGROUP), the toucher
// (XCLAIM of held entries), the claimer (XAUTOCLAIM of idle ones), the
// acker (batched XACK), and the lanes, which release into out.
type subscription struct {
	client   redis.UniversalClient
	cfg      Config
	stream   string
	logger   *slog.Logger
	readBack bool
	// takeOver: the subscriber owns the stream alone (a leased
	// partition). It first claims every entry pending in the group, and
	// lets a read in progress finish when it stops rather than cutting
	// it (see readGroup).
	takeOver bool

	lanes *lanes.Lanes
	// lctx is the parent of message contexts: it ends DrainTimeout
	// after stop began. rctx ends when stop begins and stops the loops.
	lctx, rctx       context.Context
	cancelL, cancelR context.CancelFunc
	out              chan<- *message.Message
	// own is out when out is this subscription's, closed by stop; nil
	// when out is the partitions' fan-in (partition.Share.Out), left open.
	own  chan *message.Message
	acks chan string
	// caughtUp is closed once the entries pending before the start were
	// queued (read back or taken over): the claimer waits for it, so that
	// it does not queue a later pending entry ahead of an earlier one.
	caughtUp chan struct{}

	heldMu sync.Mutex
	held   map[string]struct{} // entries released or queued, not yet acked or given up

	loops    sync.WaitGroup
	ackDone  chan struct{}
	stopOnce sync.Once
	stopped  chan struct{}
}

// start starts consuming stream. out, when set, is shared with the other
// subscriptions of one partition, and sh with those of every partition
// of one Subscribe; takeOver: see subscription.
func (s *Subscriber) start(ctx context.Context, stream string, out chan<- *message.Message, sh partition.Share, takeOver bool) *subscription {
	base := context.WithoutCancel(ctx)
	cfg := s.cfg
	if sh.ReadAhead > 0 {
		cfg.Batch = int64(sh.ReadAhead)
	}
	sub := &subscription{
		client:   s.client,
		cfg:      cfg,
		stream:   stream,
		readBack: s.readBack && !takeOver,
		takeOver: takeOver,
		logger:   s.logger.With("stream", stream, "group", s.cfg.Group, "consumer", s.cfg.Consumer),
		out:      out,
		acks:     make(chan string, 4*ackBatch),
		caughtUp: make(chan struct{}),
		held:     map[string]struct{}{},
		ackDone:  make(chan struct{}),
		stopped:  make(chan struct{}),
	}
	if out == nil {
		sub.own = make(chan *message.Message)
		sub.out = sub.own
	}
	sub.lctx, sub.cancelL = context.WithCancel(base)
	sub.rctx, sub.cancelR = context.WithCancel(base)
	// A nacked message waits in its lane (held, so touched: nobody
	// claims it meanwhile) and runs again before the later messages of
	// its key, without an in-flight slot while it waits.
	sub.lanes = lanes.New(sub.lctx, lanes.Options{
		MaxInFlight: s.cfg.MaxInFlight,
		MaxBuffered: s.cfg.maxBuffered(),
		Redeliver:   redeliverDelay,
		Slots:       sh.Slots,
		Buffered:    sh.Buffered,
		Out:         sub.out,
	})
	sub.loops.Add(3)
	go sub.read()
	go sub.keepTouched()
	go sub.claimIdle()
	go sub.ackLoop()
	return sub
}

func (sub *subscription) stop() {
	sub.stopOnce.Do(func() {
		sub.cancelR()
		sub.lanes.Drain()
		sub.loops.Wait()
		if !sub.lanes.Wait(sub.cfg.DrainTimeout) {
			sub.logger.Warn("redisstream: drain timeout; unsettled messages stay pending and will be redelivered")
		}
		sub.cancelL()
		sub.lanes.Close()
		if sub.own != nil {
			close(sub.own)
		}
		close(sub.acks)
		<-sub.ackDone
		close(sub.stopped)
	})
}

// read releases the entries pending before the start (this consumer's
// own, or with takeOver every consumer's), then new ones.
func (sub *subscription) read() {
	defer sub.loops.Done()
	if sub.takeOver && !sub.takeOverPending() {
		return
	}
	last := "0"
	for sub.readBack {
		entries, ok := sub.readGroup(last, -1)
		if !ok {
			return
		}
		if len(entries) == 0 {
			break
		}
		if !sub.pushAll(sub.hold(entries), 0) {
			return
		}
		last = entries[len(entries)-1].ID
	}
	close(sub.caughtUp)
	for {
		entries, ok := sub.readGroup(">", sub.cfg.Block)
		if !ok {
			return
		}
		if !sub.pushAll(sub.hold(entries), 1) {
			return
		}
	}
}

// readGroup runs one XREADGROUP from id, retrying on errors (a lost
// group is recreated) until it succeeds or the subscription stops.
//
// With takeOver a read in progress is not cut when the subscription
// stops but runs to its end (Block at most): cut, Redis may still hand it
// entries, which would then be pending on this consumer after the next
// owner of the partition took over, unseen by it. Ended, the entries it
// returns stay pending here before the lease is released, and the next
// owner takes them over.
func (sub *subscription) readGroup(id string, block time.Duration) ([]redis.XMessage, bool) {
	backoff := 100 * time.Millisecond
	for {
		callCtx, cancel := sub.rctx, context.CancelFunc(func() {})
		if sub.takeOver {
			// lctx ends only after the reader returned (stop waits for
			// it); the timeout bounds a stop while Redis does not answer.
			callCtx, cancel = context.WithTimeout(sub.lctx, max(block, 0)+opTimeout)
		}
		res, err := sub.client.XReadGroup(callCtx, &redis.XReadGroupArgs{
			Group:    sub.cfg.Group,
			Consumer: sub.cfg.Consumer,
			Streams:  []string{sub.stream, id},
			Count:    sub.cfg.Batch,
			Block:    block,
		}).Result()
		cancel()
		if sub.rctx.Err() != nil {
			// Entries returned now stay pending on this consumer.
			return nil, false
		}
		switch {
		case err == nil:
			if len(res) == 0 {
				return nil, true
			}
			return res[0].Messages, true
		case errors.Is(err, redis.Nil):
			return nil, true
		case isNoGroup(err):
			sub.logger.Warn("redisstream: consumer group lost (stream deleted or Redis restarted without data); recreating it")
			ctx, cancel := context.WithTimeout(sub.rctx, opTimeout)
			err = ensureGroup(ctx, sub.client, sub.stream, sub.cfg.Group)
			cancel()
			if err == nil {
				continue
			}
		}
		sub.logger.Warn("redisstream: read failed; retrying", "err", err, "in", backoff.String())
		select {
		case <-time.After(backoff):
		case <-sub.rctx.Done():
			return nil, false
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func isNoGroup(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOGROUP") }

// hold marks entries as held by this subscription before they are
// queued, so that they are touched while they wait for room in the lanes,
// and returns those that were not held already.
func (sub *subscription) hold(entries []redis.XMessage) []redis.XMessage {
	fresh := entries[:0:0]
	sub.heldMu.Lock()
	for _, e := range entries {
		if _, dup := sub.held[e.ID]; !dup {
			sub.held[e.ID] = struct{}{}
			fresh = append(fresh, e)
		}
	}
	sub.heldMu.Unlock()
	return fresh
}

// pushAll queues held entries in the lanes, in order, trimmed ones
// aside. delivery is their delivery count when known (0 otherwise). It
// returns false when the lanes stopped; the entries not queued are
// forgotten and stay pending.
func (sub *subscription) pushAll(entries []redis.XMessage, delivery int) bool {
	for i, e := range entries {
		if e.Values == nil {
			sub.forget(e.ID)
			sub.trimmed(e.ID)
			continue
		}
		if !sub.push(e, delivery) {
			for _, rest := range entries[i:] {
				sub.forget(rest.ID)
			}
			return false
		}
	}
	return true
}

func (sub *subscription) push(e redis.XMessage, delivery int) bool {
	d := decodeEntry(sub.stream, e)
	if reason := d.metadata[UndecodableMetadata]; reason != "" {
		sub.logger.Warn("redisstream: undecodable entry released with its raw fields", "entry", e.ID, "reason", reason)
	}
	if delivery > 0 {
		d.metadata[bus.DeliveryMetadata] = strconv.Itoa(delivery)
	}
	// Registered with lctx only if a handler waits on it (lazyctx).
	ctx := lazyctx.WithCancel(sub.lctx)
	msg := message.NewMessageWithContext(ctx, d.uuid, d.payload)
	msg.Metadata = d.metadata
	settle := func(acked bool) { sub.settle(e.ID, ctx, acked) }
	if !sub.lanes.Push(d.key, msg, settle, nil) {
		ctx.Cancel()
		return false
	}
	return true
}

// settle is the lanes' verdict on a message, run in its key's lane once
// a copy was acked (queued for XACK) or the subscription stops first
// (the entry stays pending: a nacked one waiting for its redelivery too).
func (sub *subscription) settle(id string, ctx *lazyctx.Ctx, acked bool) {
	ctx.Cancel()
	if acked {
		sub.acks <- id
		return
	}
	sub.forget(id)
}

// redeliverDelay is how long a nacked message waits in its lane before
// the lanes release a copy of it: the delay the router asked for, or none.
// The copy takes the nacked message's metadata, so this also readies it:
// the delay is dropped (a later nack asks its own) and a known delivery
// count goes up by one, so that what a dead letter records is the real
// number of attempts.
func redeliverDelay(nacked *message.Message) time.Duration {
	d, err := time.ParseDuration(nacked.Metadata.Get(bus.RetryDelayMetadata))
	delete(nacked.Metadata, bus.RetryDelayMetadata)
	if n, nerr := strconv.Atoi(nacked.Metadata.Get(bus.DeliveryMetadata)); nerr == nil && n > 0 {
		nacked.Metadata.Set(bus.DeliveryMetadata, strconv.Itoa(n+1))
	}
	if err != nil || d < 0 {
		return 0
	}
	return d
}

// forget drops an entry from the held set: it is no longer touched, and
// stays pending in the group until this consumer or another takes it.
func (sub *subscription) forget(ids ...string) {
	sub.heldMu.Lock()
	for _, id := range ids {
		delete(sub.held, id)
	}
	sub.heldMu.Unlock()
}

// ackLoop acks entries in batches: whatever was acked while the previous
// XACK was on the wire goes in the next one.
func (sub *subscription) ackLoop() {
	defer close(sub.ackDone)
	ids := make([]string, 0, ackBatch)
	for id := range sub.acks {
		ids = append(ids[:0], id)
	more:
		for len(ids) < ackBatch {
			select {
			case id, ok := <-sub.acks:
				if !ok {
					break more
				}
				ids = append(ids, id)
			default:
				break more
			}
		}
		sub.xack(ids)
	}
}

func (sub *subscription) xack(ids []string) {
	defer sub.forget(ids...)
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		err := sub.client.XAck(ctx, sub.stream, sub.cfg.Group, ids...).Err()
		cancel()
		if err == nil {
			return
		}
		if attempt == 3 {
			sub.logger.Warn("redisstream: ack failed; the entries will be redelivered", "entries", len(ids), "err", err)
			return
		}
		time.Sleep(backoff)
		backoff *= 4
	}
}

// trimmed acks a pending entry whose data the stream no longer has
// (MAXLEN trimmed it before it was handled): there is nothing to deliver.
func (sub *subscription) trimmed(id string) {
	sub.logger.Error("redisstream: pending entry was trimmed from the stream before it was handled; raise redis.max_len", "entry", id)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_ = sub.client.XAck(ctx, sub.stream, sub.cfg.Group, id).Err()
}

// keepTouched touches the entries this consumer holds, so that nobody
// claims them while they wait behind their key or run. It has a goroutine
// of its own: claiming blocks while the lanes are full.
func (sub *subscription) keepTouched() {
	defer sub.loops.Done()
	t := time.NewTicker(max(sub.cfg.ClaimIdle/3, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-sub.rctx.Done():
			return
		case <-t.C:
			sub.touch()
		}
	}
}

// claimIdle claims entries idle on other consumers, and now and then
// prunes the group's stale consumers.
//
// On a partition (takeOver) nobody else reads the stream, so after the
// take-over a sweep finds nothing, and it costs one XAUTOCLAIM per
// ClaimInterval. It is kept as a safety net: a worker that stalled past
// its lease (a long pause) may still read entries after the new owner
// took over, and they would otherwise wait for the partition's next
// change of owner.
func (sub *subscription) claimIdle() {
	defer sub.loops.Done()
	select {
	case <-sub.caughtUp:
	case <-sub.rctx.Done():
		return
	}
	claim := time.NewTicker(sub.cfg.ClaimInterval)
	defer claim.Stop()
	prune := time.NewTicker(pruneEvery)
	defer prune.Stop()
	for {
		select {
		case <-sub.rctx.Done():
			return
		case <-claim.C:
			sub.claim()
		case <-prune.C:
			sub.prune()
		}
	}
}

// delIdleConsumer deletes consumer ARGV[2] of group ARGV[1] on stream
// KEYS[1] if it has no pending entry; it returns -1 otherwise.
var delIdleConsumer = redis.NewScript(`
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
`)

// prune removes consumers of the group that hold nothing and have been
// silent for staleConsumer: the default consumer name changes with every
// process, and the group would otherwise keep every name it ever saw.
func (sub *subscription) prune() {
	ctx, cancel := context.WithTimeout(sub.rctx, opTimeout)
	defer cancel()
	consumers, err := sub.client.XInfoConsumers(ctx, sub.stream, sub.cfg.Group).Result()
	if err != nil {
		return
	}
	for _, c := range consumers {
		if c.Name == sub.cfg.Consumer || c.Pending > 0 || c.Idle < staleConsumer {
			continue
		}
		// DELCONSUMER drops the consumer's pending entries, so the
		// script checks there are none in the same step.
		n, err := delIdleConsumer.Run(ctx, sub.client, []string{sub.stream}, sub.cfg.Group, c.Name).Int64()
		if err == nil && n >= 0 {
			sub.logger.Info("redisstream: removed a stale consumer from the group", "stale", c.Name, "idle", c.Idle.String())
		}
	}
}

// touch resets the idle time of every held entry (XCLAIM to itself,
// JUSTID, which does not count a delivery).
func (sub *subscription) touch() {
	sub.heldMu.Lock()
	ids := make([]string, 0, len(sub.held))
	for id := range sub.held {
		ids = append(ids, id)
	}
	sub.heldMu.Unlock()
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(sub.rctx, opTimeout)
	defer cancel()
	pipe := sub.client.Pipeline()
	for start := 0; start < len(ids); start += touchChunk {
		pipe.XClaimJustID(ctx, &redis.XClaimArgs{
			Stream: sub.stream, Group: sub.cfg.Group, Consumer: sub.cfg.Consumer,
			Messages: ids[start:min(start+touchChunk, len(ids))],
		})
	}
	if _, err := pipe.Exec(ctx); err != nil && sub.rctx.Err() == nil {
		sub.logger.Warn("redisstream: touching held entries failed; another consumer may claim them", "entries", len(ids), "err", err)
	}
}

// takeOverPending claims every entry pending in the group on the stream,
// whichever consumer holds it (XAUTOCLAIM, min-idle 0, from 0-0), and
// queues them in ID order. It retries until it went through the whole
// pending list, so that no new entry is read before an older one it
// missed, and reports false when the subscription stops first (what it
// claimed stays pending on this consumer, for the next owner).
func (sub *subscription) takeOverPending() bool {
	start, taken := "0-0", 0
	backoff := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(sub.rctx, opTimeout)
		msgs, next, err := sub.client.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: sub.stream, Group: sub.cfg.Group, Consumer: sub.cfg.Consumer,
			MinIdle: 0, Start: start, Count: sub.cfg.Batch,
		}).Result()
		cancel()
		if sub.rctx.Err() != nil {
			return false
		}
		if err != nil {
			if isNoGroup(err) {
				// Nothing can be pending in a group that is gone.
				ctx, cancel := context.WithTimeout(sub.rctx, opTimeout)
				err = ensureGroup(ctx, sub.client, sub.stream, sub.cfg.Group)
				cancel()
				if err == nil {
					break
				}
			}
			sub.logger.Warn("redisstream: taking over pending entries failed; retrying", "err", err, "in", backoff.String())
			select {
			case <-time.After(backoff):
			case <-sub.rctx.Done():
				return false
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		fresh := sub.hold(msgs)
		taken += len(fresh)
		if !sub.pushAll(fresh, 0) {
			return false
		}
		if next == "0-0" || next == "" {
			break
		}
		start = next
	}
	if taken > 0 {
		sub.logger.Info("redisstream: took over the entries pending on the partition", "entries", taken)
	}
	return true
}

// claim takes over entries idle longer than ClaimIdle, on any consumer
// of the group (a dead worker, or this one's leftovers).
func (sub *subscription) claim() {
	start := "0-0"
	claimed := 0
	defer func() {
		if claimed > 0 {
			sub.logger.Info("redisstream: claimed idle pending entries", "entries", claimed)
		}
	}()
	for range claimRounds {
		ctx, cancel := context.WithTimeout(sub.rctx, opTimeout)
		msgs, next, err := sub.client.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: sub.stream, Group: sub.cfg.Group, Consumer: sub.cfg.Consumer,
			MinIdle: sub.cfg.ClaimIdle, Start: start, Count: sub.cfg.Batch,
		}).Result()
		cancel()
		if err != nil {
			if sub.rctx.Err() == nil && !isNoGroup(err) {
				sub.logger.Warn("redisstream: claim failed", "err", err)
			}
			return
		}
		fresh := sub.hold(msgs)
		claimed += len(fresh)
		if !sub.pushAll(fresh, 0) {
			return
		}
		if next == "0-0" || next == "" {
			return
		}
		start = next
	}
}

// OnAcquire sets the hook run on each partition this subscriber takes,
// before it consumes it (bus.PartitionWatcher). Call it before
// Subscribe.
func (s *Subscriber) OnAcquire(hook bus.AcquireHook) { s.acquired = hook }
