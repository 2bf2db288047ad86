package stores_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/stores"
)

// batchingStore is a ledger store that coalesces concurrent calls.
type batchingStore interface {
	ledgerStore
	Close() error
}

// batchingEnv is what runCoalescingSuite needs of a store.
type batchingEnv struct {
	// newStore returns an empty store of its own, a counter of the round
	// trips it made, and a key of it whose Reserve the server refuses.
	newStore func(t *testing.T) (s batchingStore, trips *atomic.Int64, poison string)
	// stall returns a fresh store, and a key whose Commit by owner "x"
	// hangs on the server until release is called. wholeServer is true
	// when every call hangs meanwhile, not only that key's.
	stall       func(t *testing.T) (s batchingStore, key string, release func())
	wholeServer bool
}

// runCoalescingSuite checks that concurrent calls, which share round
// trips, still get their own answers and errors.
func runCoalescingSuite(t *testing.T, env batchingEnv) {
	ctx := context.Background()
	const lease, window = time.Minute, time.Minute

	// together runs f(0..n-1) in n goroutines released at once.
	together := func(n int, f func(i int)) {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				f(i)
			}()
		}
		close(start)
		wg.Wait()
	}

	t.Run("concurrent callers get their own answers", func(t *testing.T) {
		s, trips, _ := env.newStore(t)
		const n = 300
		// The state each caller finds: even cache keys are stored, every
		// "done-" key is committed, every "held-" key is claimed by "h".
		together(n, func(i int) {
			if i%2 == 0 {
				if err := s.Store(ctx, fmt.Sprint("hit-", i), time.Minute); err != nil {
					t.Errorf("Store %d: %v", i, err)
				}
			}
			if _, err := s.Reserve(ctx, fmt.Sprint("done-", i), "h", lease); err != nil {
				t.Errorf("Reserve done-%d: %v", i, err)
			}
			if err := s.Commit(ctx, fmt.Sprint("done-", i), "h", window); err != nil {
				t.Errorf("Commit done-%d: %v", i, err)
			}
			if r, err := s.Reserve(ctx, fmt.Sprint("held-", i), "h", lease); err != nil || r != stores.Claimed {
				t.Errorf("Reserve held-%d = %v, %v", i, r, err)
			}
		})
		if t.Failed() {
			t.FailNow()
		}
		before := trips.Load()
		together(n, func(i int) {
			hit := fmt.Sprint("hit-", i)
			wantHit := fmt.Sprint([]bool{i%2 == 0, false})
			switch i % 6 {
			case 0:
				r, err := s.ReserveLookup(ctx, fmt.Sprint("fresh-", i), "o", lease, []string{hit, "miss"})
				if err != nil || r.ReserveErr != nil || r.LookupErr != nil {
					t.Errorf("ReserveLookup %d: %v / %v / %v", i, err, r.ReserveErr, r.LookupErr)
				} else if r.Reservation != stores.Claimed || fmt.Sprint(r.Hits) != wantHit {
					t.Errorf("ReserveLookup %d = %v %v; want claimed %s", i, r.Reservation, r.Hits, wantHit)
				}
			case 1:
				r, err := s.ReserveLookup(ctx, fmt.Sprint("done-", i), "o", lease, []string{hit})
				if err != nil || r.ReserveErr != nil || r.Reservation != stores.Done {
					t.Errorf("ReserveLookup of a done key %d = %v, %v / %v; want done", i, r.Reservation, err, r.ReserveErr)
				}
			case 2:
				if r, err := s.Reserve(ctx, fmt.Sprint("held-", i), "o", lease); err != nil || r != stores.InFlight {
					t.Errorf("Reserve of a held key %d = %v, %v; want in_flight", i, r, err)
				}
			case 3:
				// Committed over h's claim: the key is done, h's claim ended.
				if err := s.Commit(ctx, fmt.Sprint("held-", i), "o", window); !errors.Is(err, stores.ErrLeaseLost) {
					t.Errorf("Commit by another owner %d = %v; want ErrLeaseLost", i, err)
				}
				if err := s.Extend(ctx, fmt.Sprint("held-", i), "h", lease); !errors.Is(err, stores.ErrLeaseLost) {
					t.Errorf("Extend by the owner committed over %d = %v; want ErrLeaseLost", i, err)
				}
			case 4:
				if hits, err := s.Lookup(ctx, hit, "miss"); err != nil || fmt.Sprint(hits) != wantHit {
					t.Errorf("Lookup %d = %v, %v; want %s", i, hits, err, wantHit)
				}
				if err := s.Store(ctx, fmt.Sprint("stored-", i), time.Minute); err != nil {
					t.Errorf("Store %d: %v", i, err)
				}
			case 5:
				if err := s.Release(ctx, fmt.Sprint("held-", i), "h"); err != nil {
					t.Errorf("Release %d: %v", i, err)
				}
				if err := s.Extend(ctx, fmt.Sprint("held-", i), "h", lease); !errors.Is(err, stores.ErrLeaseLost) {
					t.Errorf("Extend after Release %d = %v; want ErrLeaseLost", i, err)
				}
			}
		})
		calls := int64(n + n/6 + n/6) // cases 3, 4 and 5 make two calls
		if got := trips.Load() - before; got >= calls {
			t.Errorf("%d concurrent calls took %d round trips; want fewer", calls, got)
		} else {
			t.Logf("%d concurrent calls took %d round trips", calls, got)
		}
		// What the calls did is what later calls find.
		for i := range n {
			var want stores.Reservation
			var key string
			switch i % 6 {
			case 0:
				key, want = fmt.Sprint("fresh-", i), stores.InFlight
			case 3:
				key, want = fmt.Sprint("held-", i), stores.Done
			case 4:
				if hits, err := s.Lookup(ctx, fmt.Sprint("stored-", i)); err != nil || !hits[0] {
					t.Errorf("Lookup(stored-%d) afterwards = %v, %v", i, hits, err)
				}
				continue
			case 5:
				key, want = fmt.Sprint("held-", i), stores.Claimed
			default:
				continue
			}
			if r, err := s.Reserve(ctx, key, "later", lease); err != nil || r != want {
				t.Errorf("Reserve(%s) afterwards = %v, %v; want %v", key, r, err, want)
			}
		}
	})

	t.Run("one claim among many concurrent reserves of a key", func(t *testing.T) {
		s, _, _ := env.newStore(t)
		const n = 100
		var claimed, inFlight atomic.Int64
		together(n, func(i int) {
			r, err := s.ReserveLookup(ctx, "k", fmt.Sprint("owner", i), lease, []string{"c"})
			switch {
			case err != nil || r.ReserveErr != nil || r.LookupErr != nil:
				t.Errorf("ReserveLookup %d: %v / %v / %v", i, err, r.ReserveErr, r.LookupErr)
			case r.Reservation == stores.Claimed:
				claimed.Add(1)
			case r.Reservation == stores.InFlight:
				inFlight.Add(1)
			default:
				t.Errorf("ReserveLookup %d = %v", i, r.Reservation)
			}
		})
		if claimed.Load() != 1 || inFlight.Load() != n-1 {
			t.Errorf("%d claimed and %d in flight of %d concurrent reserves; want 1 and %d", claimed.Load(), inFlight.Load(), n, n-1)
		}
	})

	t.Run("a call the server refuses fails alone", func(t *testing.T) {
		s, _, bad := env.newStore(t)
		if err := s.Store(ctx, "c", time.Minute); err != nil {
			t.Fatal(err)
		}
		for round := range 5 {
			const n = 50
			together(n+1, func(i int) {
				if i == n {
					if _, err := s.Reserve(ctx, bad, "o", lease); err == nil {
						t.Errorf("round %d: Reserve of the poisoned key succeeded", round)
					}
					return
				}
				key := fmt.Sprint("k-", round, "-", i)
				r, err := s.ReserveLookup(ctx, key, "o", lease, []string{"c", "miss"})
				if err != nil || r.ReserveErr != nil || r.LookupErr != nil {
					t.Errorf("round %d: ReserveLookup %d beside a refused call: %v / %v / %v", round, i, err, r.ReserveErr, r.LookupErr)
				} else if r.Reservation != stores.Claimed || fmt.Sprint(r.Hits) != "[true false]" {
					t.Errorf("round %d: ReserveLookup %d = %v %v; want claimed [true false]", round, i, r.Reservation, r.Hits)
				}
			})
		}
	})

	t.Run("a caller past its deadline returns at once; the others in its batch get their answers", func(t *testing.T) {
		s, key, release := env.stall(t)
		defer release()
		const n = 20
		res := make([]stores.Reservation, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			together(n+1, func(i int) {
				if i == n {
					// Hangs on the server: it gives up at its deadline,
					// while the callers that went in its batch wait on.
					tctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
					defer cancel()
					start := time.Now()
					if err := s.Commit(tctx, key, "x", window); !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("Commit past its deadline = %v; want DeadlineExceeded", err)
					}
					if d := time.Since(start); d > 2*time.Second {
						t.Errorf("Commit returned %v after it started, with a 200ms deadline", d)
					}
					release()
					return
				}
				cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				defer cancel()
				res[i], errs[i] = s.Reserve(cctx, fmt.Sprint("k", i), "o", lease)
			})
		}()
		wg.Wait()
		for i := range n {
			if errs[i] != nil || res[i] != stores.Claimed {
				t.Errorf("Reserve %d = %v, %v; want claimed", i, res[i], errs[i])
			}
		}
	})

	t.Run("a cancelled caller returns at once; the other calls go on", func(t *testing.T) {
		s, key, release := env.stall(t)
		defer release()
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := s.Commit(cctx, key, "x", window); !errors.Is(err, context.Canceled) {
				t.Errorf("cancelled Commit = %v; want Canceled", err)
			}
		}()
		time.Sleep(100 * time.Millisecond) // the Commit hangs on the server
		if !env.wholeServer {
			fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
			defer fcancel()
			start := time.Now()
			if r, err := s.Reserve(fctx, "meanwhile", "o", lease); err != nil || r != stores.Claimed {
				t.Errorf("Reserve while another batch hangs = %v, %v; want claimed", r, err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("Reserve while another batch hangs took %v", d)
			}
		}
		start := time.Now()
		cancel()
		select {
		case <-done:
			if d := time.Since(start); d > time.Second {
				t.Errorf("Commit returned %v after it was cancelled", d)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("cancelled Commit did not return")
		}
	})

	t.Run("Close answers the pending calls with errors", func(t *testing.T) {
		s, key, release := env.stall(t)
		defer release()
		const n = 30
		errs := make(chan error, n)
		for i := range n {
			go func() {
				if i%3 == 0 {
					errs <- s.Commit(ctx, key, "x", window) // hangs on the server
					return
				}
				_, err := s.Reserve(ctx, fmt.Sprint("k", i), "o", lease)
				errs <- err
			}()
		}
		time.Sleep(300 * time.Millisecond) // the calls are on the wire or queued
		closed := make(chan error, 1)
		closing := time.Now()
		go func() { closed <- s.Close() }()
		deadline := time.After(15 * time.Second)
		failed := 0
		for range n {
			select {
			case err := <-errs:
				if err != nil {
					failed++
				}
			case <-deadline:
				t.Fatal("calls still pending 15s after Close")
			}
		}
		// At once, not when the server lets go of them.
		if d := time.Since(closing); d > 1500*time.Millisecond {
			t.Errorf("the pending calls returned %v after Close", d)
		}
		// Reserves of free keys may have been answered before Close;
		// the Commits hang until then.
		if failed < n/3 {
			t.Errorf("%d of %d pending calls failed at Close; want at least the %d hanging ones", failed, n, n/3)
		}
		select {
		case err := <-closed:
			if err != nil {
				t.Errorf("Close: %v", err)
			}
		case <-deadline:
			t.Fatal("Close did not return")
		}
		if _, err := s.Reserve(ctx, "after", "o", lease); !errors.Is(err, stores.ErrStoreClosed) {
			t.Errorf("Reserve after Close = %v; want ErrStoreClosed", err)
		}
		if err := s.Commit(ctx, "after", "o", window); !errors.Is(err, stores.ErrStoreClosed) {
			t.Errorf("Commit after Close = %v; want ErrStoreClosed", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
}

// tripCounter counts a Redis client's round trips.
type tripCounter struct{ n *atomic.Int64 }

func (h tripCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h tripCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h tripCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

func TestRedisStoreCoalesces(t *testing.T) {
	t.Parallel()
	newStore := func(t *testing.T, client *redis.Client, prefix string) (batchingStore, *atomic.Int64) {
		trips := &atomic.Int64{}
		client.AddHook(tripCounter{trips})
		s, err := stores.NewRedisStore(client, stores.RedisStoreConfig{KeyPrefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s, trips
	}
	runCoalescingSuite(t, batchingEnv{
		newStore: func(t *testing.T) (batchingStore, *atomic.Int64, string) {
			client, prefix := testenv.Redis(t)
			// SET ... GET fails on a key that does not hold a string.
			if err := client.RPush(context.Background(), prefix+"list", "x").Err(); err != nil {
				t.Fatal(err)
			}
			s, trips := newStore(t, client, prefix)
			return s, trips, "list"
		},
		// A private server, paused: every call hangs until the pause
		// ends.
		stall: func(t *testing.T) (batchingStore, string, func()) {
			srv := testenv.StartRedis(t)
			opts, err := redis.ParseURL(srv.URL())
			if err != nil {
				t.Fatal(err)
			}
			client := redis.NewClient(opts)
			t.Cleanup(func() { _ = client.Close() })
			s, _ := newStore(t, client, "")
			admin := redis.NewClient(opts)
			t.Cleanup(func() { _ = admin.Close() })
			const pause = 3 * time.Second
			if err := admin.Do(context.Background(), "CLIENT", "PAUSE", pause.Milliseconds(), "ALL").Err(); err != nil {
				t.Fatal(err)
			}
			ends := time.Now().Add(pause)
			return s, "k", func() { time.Sleep(time.Until(ends)) }
		},
		wholeServer: true,
	})
}

// pgTrips counts a pgx pool's round trips.
type pgTrips struct{ n *atomic.Int64 }

func (p pgTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	p.n.Add(1)
	return ctx
}

func (pgTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (p pgTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	p.n.Add(1)
	return ctx
}

func (pgTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

func (pgTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

func TestPostgresStoreCoalesces(t *testing.T) {
	t.Parallel()
	newStore := func(t *testing.T) (*stores.PostgresStore, *pgxpool.Pool, *atomic.Int64) {
		pool, _ := testenv.Postgres(t)
		trips := &atomic.Int64{}
		cfg := pool.Config().Copy()
		cfg.ConnConfig.Tracer = pgTrips{trips}
		traced, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(traced.Close)
		s, err := stores.NewPostgresStore(traced, stores.PostgresStoreConfig{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		if err := s.Migrate(context.Background()); err != nil {
			t.Fatal(err)
		}
		return s, pool, trips
	}
	runCoalescingSuite(t, batchingEnv{
		newStore: func(t *testing.T) (batchingStore, *atomic.Int64, string) {
			s, _, trips := newStore(t)
			// PostgreSQL text cannot hold a NUL byte.
			return s, trips, "bad\x00key"
		},
		// Another transaction locks the key's row: a Commit of it waits
		// for the lock, the other keys do not.
		stall: func(t *testing.T) (batchingStore, string, func()) {
			ctx := context.Background()
			s, pool, _ := newStore(t)
			if _, err := s.Reserve(ctx, "locked", "x", time.Minute); err != nil {
				t.Fatal(err)
			}
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "SELECT 1 FROM millrace_ledger WHERE key = 'locked' FOR UPDATE"); err != nil {
				t.Fatal(err)
			}
			release := sync.OnceFunc(func() { _ = tx.Rollback(ctx) })
			t.Cleanup(release)
			return s, "locked", release
		},
	})
}
