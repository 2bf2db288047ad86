package stores_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/stores"
)

// ledgerStore is what every ledger store implements.
type ledgerStore interface {
	stores.DedupStore
	stores.ResultCache
	stores.ReserveLooker
}

// runLedgerStoreSuite is the conformance suite of the dedup and cache
// stores; newStore returns an empty store of its own.
func runLedgerStoreSuite(t *testing.T, newStore func(t *testing.T) ledgerStore) {
	ctx := context.Background()
	const lease, window = time.Minute, time.Minute

	reserve := func(t *testing.T, s ledgerStore, key, owner string, l time.Duration, want stores.Reservation) {
		t.Helper()
		got, err := s.Reserve(ctx, key, owner, l)
		if err != nil {
			t.Fatalf("Reserve(%s, %s): %v", key, owner, err)
		}
		if got != want {
			t.Fatalf("Reserve(%s, %s) = %v; want %v", key, owner, got, want)
		}
	}

	t.Run("claim, in flight, commit, done", func(t *testing.T) {
		s := newStore(t)
		reserve(t, s, "k", "a", lease, stores.Claimed)
		reserve(t, s, "k", "b", lease, stores.InFlight)
		reserve(t, s, "k", "a", lease, stores.InFlight) // a second run of the same owner does not re-enter
		if err := s.Commit(ctx, "k", "a", window); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		reserve(t, s, "k", "b", lease, stores.Done)
		// Committing twice, or after another run committed, is fine.
		if err := s.Commit(ctx, "k", "b", window); err != nil {
			t.Fatalf("second Commit: %v", err)
		}
		reserve(t, s, "other", "b", lease, stores.Claimed)
	})

	t.Run("release frees only the owner's claim", func(t *testing.T) {
		s := newStore(t)
		reserve(t, s, "k", "a", lease, stores.Claimed)
		if err := s.Release(ctx, "k", "b"); err != nil {
			t.Fatalf("Release by another owner: %v", err)
		}
		reserve(t, s, "k", "b", lease, stores.InFlight)
		if err := s.Release(ctx, "k", "a"); err != nil {
			t.Fatalf("Release: %v", err)
		}
		reserve(t, s, "k", "b", lease, stores.Claimed)
		// A done key is not released.
		if err := s.Commit(ctx, "k", "b", window); err != nil {
			t.Fatal(err)
		}
		if err := s.Release(ctx, "k", "b"); err != nil {
			t.Fatal(err)
		}
		reserve(t, s, "k", "c", lease, stores.Done)
	})

	t.Run("extend", func(t *testing.T) {
		s := newStore(t)
		reserve(t, s, "k", "a", 300*time.Millisecond, stores.Claimed)
		if err := s.Extend(ctx, "k", "b", lease); !errors.Is(err, stores.ErrLeaseLost) {
			t.Fatalf("Extend by another owner = %v; want ErrLeaseLost", err)
		}
		if err := s.Extend(ctx, "k", "a", lease); err != nil {
			t.Fatalf("Extend: %v", err)
		}
		time.Sleep(500 * time.Millisecond) // past the first lease
		reserve(t, s, "k", "b", lease, stores.InFlight)
		if err := s.Extend(ctx, "missing", "a", lease); !errors.Is(err, stores.ErrLeaseLost) {
			t.Fatalf("Extend of a missing key = %v; want ErrLeaseLost", err)
		}
	})

	t.Run("an expired lease can be claimed; the old owner's commit says so and marks done", func(t *testing.T) {
		s := newStore(t)
		reserve(t, s, "k", "a", 200*time.Millisecond, stores.Claimed)
		time.Sleep(400 * time.Millisecond)
		reserve(t, s, "k", "b", lease, stores.Claimed)
		if err := s.Extend(ctx, "k", "a", lease); !errors.Is(err, stores.ErrLeaseLost) {
			t.Fatalf("Extend by the expired owner = %v; want ErrLeaseLost", err)
		}
		reserve(t, s, "k", "c", lease, stores.InFlight)
		if err := s.Commit(ctx, "k", "a", window); !errors.Is(err, stores.ErrLeaseLost) {
			t.Fatalf("Commit by the expired owner = %v; want ErrLeaseLost", err)
		}
		// a's work was done: the key is done, and b's claim has ended.
		reserve(t, s, "k", "c", lease, stores.Done)
		if err := s.Extend(ctx, "k", "b", lease); !errors.Is(err, stores.ErrLeaseLost) {
			t.Fatalf("Extend by the owner whose claim was committed over = %v; want ErrLeaseLost", err)
		}
		if err := s.Release(ctx, "k", "b"); err != nil {
			t.Fatalf("Release: %v", err)
		}
		reserve(t, s, "k", "c", lease, stores.Done)
		if err := s.Commit(ctx, "k", "b", window); err != nil {
			t.Fatalf("Commit of a done key: %v", err)
		}
	})

	t.Run("commit after the lease expired, unclaimed, still marks done", func(t *testing.T) {
		s := newStore(t)
		reserve(t, s, "k", "a", 200*time.Millisecond, stores.Claimed)
		time.Sleep(400 * time.Millisecond)
		if err := s.Commit(ctx, "k", "a", window); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		reserve(t, s, "k", "b", lease, stores.Done)
	})

	t.Run("the window ends", func(t *testing.T) {
		s := newStore(t)
		reserve(t, s, "k", "a", lease, stores.Claimed)
		if err := s.Commit(ctx, "k", "a", 300*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		reserve(t, s, "k", "b", lease, stores.Done)
		time.Sleep(500 * time.Millisecond)
		reserve(t, s, "k", "b", lease, stores.Claimed)
	})

	t.Run("one claim among concurrent reserves", func(t *testing.T) {
		s := newStore(t)
		const n = 16
		var wg sync.WaitGroup
		res := make([]stores.Reservation, n)
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i], errs[i] = s.Reserve(ctx, "k", fmt.Sprint("owner", i), lease)
			}()
		}
		wg.Wait()
		claimed := 0
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("Reserve %d: %v", i, errs[i])
			}
			switch res[i] {
			case stores.Claimed:
				claimed++
			case stores.InFlight:
			default:
				t.Errorf("Reserve %d = %v; want claimed or in_flight", i, res[i])
			}
		}
		if claimed != 1 {
			t.Errorf("%d of %d concurrent reserves claimed the key; want 1", claimed, n)
		}
	})

	t.Run("cache", func(t *testing.T) {
		s := newStore(t)
		hits, err := s.Lookup(ctx, "c1", "c2", "c3")
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(hits) != "[false false false]" {
			t.Fatalf("Lookup on an empty store = %v", hits)
		}
		if err := s.Store(ctx, "c2", time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := s.Store(ctx, "c3", 300*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if hits, err = s.Lookup(ctx, "c1", "c2", "c3"); err != nil || fmt.Sprint(hits) != "[false true true]" {
			t.Fatalf("Lookup = %v, %v; want [false true true]", hits, err)
		}
		time.Sleep(500 * time.Millisecond)
		if hits, err = s.Lookup(ctx, "c3", "c2"); err != nil || fmt.Sprint(hits) != "[false true]" {
			t.Fatalf("Lookup after c3's TTL = %v, %v; want [false true]", hits, err)
		}
		if hits, err = s.Lookup(ctx); err != nil || len(hits) != 0 {
			t.Fatalf("Lookup() = %v, %v", hits, err)
		}
	})

	t.Run("reserve and lookup in one call", func(t *testing.T) {
		s := newStore(t)
		if err := s.Store(ctx, "c2", time.Minute); err != nil {
			t.Fatal(err)
		}
		r, err := s.ReserveLookup(ctx, "k", "a", lease, []string{"c1", "c2"})
		if err != nil || r.ReserveErr != nil || r.LookupErr != nil {
			t.Fatalf("ReserveLookup: %v / %v / %v", err, r.ReserveErr, r.LookupErr)
		}
		if r.Reservation != stores.Claimed || fmt.Sprint(r.Hits) != "[false true]" {
			t.Fatalf("ReserveLookup = %v %v; want claimed [false true]", r.Reservation, r.Hits)
		}
		if r, err = s.ReserveLookup(ctx, "k", "b", lease, []string{"c1"}); err != nil || r.Reservation != stores.InFlight {
			t.Fatalf("second ReserveLookup = %v, %v; want in_flight", r.Reservation, err)
		}
		if err := s.Commit(ctx, "k", "a", window); err != nil {
			t.Fatal(err)
		}
		if r, err = s.ReserveLookup(ctx, "k", "b", lease, nil); err != nil || r.Reservation != stores.Done {
			t.Fatalf("ReserveLookup after commit = %v, %v; want done", r.Reservation, err)
		}
	})

	t.Run("dedup and cache keys do not collide", func(t *testing.T) {
		s := newStore(t)
		keys := stores.CacheKeys("ev", "obs", []string{"h"})
		if err := s.Store(ctx, keys[0], time.Minute); err != nil {
			t.Fatal(err)
		}
		reserve(t, s, stores.DedupKey("ev", "obs"), "a", lease, stores.Claimed)
	})
}

func TestMemoryStore(t *testing.T) {
	t.Parallel()
	runLedgerStoreSuite(t, func(t *testing.T) ledgerStore {
		s, err := stores.NewMemoryStore(stores.MemoryStoreConfig{JanitorInterval: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

func TestMemoryStoreBounded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := stores.NewMemoryStore(stores.MemoryStoreConfig{MaxEntries: 3, JanitorInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if err := s.Store(ctx, "short", 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b"} {
		if _, err := s.Reserve(ctx, k, "o", time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Reserve(ctx, "c", "o", time.Minute); !errors.Is(err, stores.ErrStoreFull) {
		t.Fatalf("Reserve on a full store = %v; want ErrStoreFull", err)
	}
	if err := s.Store(ctx, "c", time.Minute); !errors.Is(err, stores.ErrStoreFull) {
		t.Fatalf("Store on a full store = %v; want ErrStoreFull", err)
	}
	// Updating a held key needs no room.
	if err := s.Commit(ctx, "a", "o", time.Minute); err != nil {
		t.Fatalf("Commit on a full store: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // "short" expires and makes room
	if r, err := s.Reserve(ctx, "c", "o", time.Minute); err != nil || r != stores.Claimed {
		t.Fatalf("Reserve after an entry expired = %v, %v; want claimed", r, err)
	}
	if s.Len() != 3 {
		t.Errorf("Len = %d; want 3", s.Len())
	}
}

func TestMemoryStoreJanitor(t *testing.T) {
	ctx := context.Background()
	before := runtime.NumGoroutine()
	s, err := stores.NewMemoryStore(stores.MemoryStoreConfig{JanitorInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := s.Store(ctx, fmt.Sprint(i), 10*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := s.Len(); n != 0 {
		t.Errorf("janitor left %d expired keys", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// The janitor is gone: no goroutine outlives the store.
	deadline = time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after Close; %d before NewMemoryStore", n, before)
	}
}

func TestRedisStore(t *testing.T) {
	t.Parallel()
	runLedgerStoreSuite(t, func(t *testing.T) ledgerStore {
		client, prefix := testenv.Redis(t)
		s, err := stores.NewRedisStore(client, stores.RedisStoreConfig{KeyPrefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestRedisStoreKeysCarryThePrefix(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	client, prefix := testenv.Redis(t)
	s, err := stores.NewRedisStore(client, stores.RedisStoreConfig{KeyPrefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	key := stores.DedupKey("e1", "obs")
	if _, err := s.Reserve(ctx, key, "a", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.Store(ctx, "c", time.Minute); err != nil {
		t.Fatal(err)
	}
	if n, err := client.Exists(ctx, prefix+key, prefix+"c").Result(); err != nil || n != 2 {
		t.Errorf("Exists(prefixed keys) = %d, %v; want 2", n, err)
	}
	ttl, err := client.PTTL(ctx, prefix+key).Result()
	if err != nil || ttl <= 0 || ttl > time.Minute {
		t.Errorf("PTTL of a claim = %v, %v; want the lease", ttl, err)
	}
	if _, err := stores.NewRedisStore(client, stores.RedisStoreConfig{KeyPrefix: "x*"}); err == nil {
		t.Error("NewRedisStore accepted a prefix with a glob character")
	}
}

func TestRedisStoreFailsWhenTheServerIsDown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := testenv.StartRedis(t)
	opts, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	client := redis.NewClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	s, err := stores.NewRedisStore(client, stores.RedisStoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Reserve(ctx, "k", "a", time.Minute); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.Reserve(tctx, "k2", "a", time.Minute); err == nil {
		t.Error("Reserve succeeded with the server down")
	}
	r, err := s.ReserveLookup(tctx, "k2", "a", time.Minute, []string{"c"})
	if err != nil || r.ReserveErr == nil || r.LookupErr == nil {
		t.Errorf("ReserveLookup with the server down = %v / %v / %v; want both halves to fail", err, r.ReserveErr, r.LookupErr)
	}
	srv.Start()
	if r, err := s.Reserve(ctx, "k3", "a", time.Minute); err != nil || r != stores.Claimed {
		t.Errorf("Reserve after restart = %v, %v", r, err)
	}
}

func TestPostgresStore(t *testing.T) {
	t.Parallel()
	runLedgerStoreSuite(t, func(t *testing.T) ledgerStore {
		pool, _ := testenv.Postgres(t)
		s, err := stores.NewPostgresStore(pool, stores.PostgresStoreConfig{JanitorInterval: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		if err := s.Migrate(context.Background()); err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// Processes starting at once on a new database migrate the same table
// together: every Migrate succeeds (without a lock, all but one could
// fail on the catalog's unique index, pg_type_typname_nsp_index).
func TestPostgresStoreMigrateConcurrently(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, schema := testenv.Postgres(t)
	for round := range 5 {
		table := fmt.Sprintf("%s.ledger%d", schema, round)
		errs := make([]error, 8)
		var wg sync.WaitGroup
		for i := range errs {
			s, err := stores.NewPostgresStore(pool, stores.PostgresStoreConfig{Table: table})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			wg.Go(func() { errs[i] = s.Migrate(ctx) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("%s: concurrent Migrate %d: %v", table, i, err)
			}
		}
	}
}

func TestPostgresStoreMigrateAndJanitor(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, schema := testenv.Postgres(t)
	s, err := stores.NewPostgresStore(pool, stores.PostgresStoreConfig{Table: schema + ".ledger", JanitorInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	for range 2 {
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("Migrate: %v", err)
		}
	}
	for i := range 20 {
		if err := s.Store(ctx, fmt.Sprint(i), 10*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Store(ctx, "kept", time.Minute); err != nil {
		t.Fatal(err)
	}
	var n int
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM ledger").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n != 1 {
		t.Errorf("%d rows after the janitor ran; want the 1 unexpired", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	unmigrated, err := stores.NewPostgresStore(pool, stores.PostgresStoreConfig{Table: "other"})
	if err != nil {
		t.Fatal(err)
	}
	if err := unmigrated.Close(); err != nil {
		t.Fatalf("Close before Migrate: %v", err)
	}
	if _, err := stores.NewPostgresStore(pool, stores.PostgresStoreConfig{Table: "bad; drop"}); err == nil {
		t.Error("NewPostgresStore accepted a table name that is not an identifier")
	}
}
