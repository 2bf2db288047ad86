package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/stores"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/millrace/millrace/middleware"
)

func newLedgerMemory(t *testing.T) *stores.MemoryStore {
	t.Helper()
	s, err := stores.NewMemoryStore(stores.MemoryStoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestLedgerClaimCommitDuplicate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := newLedgerMemory(t)
	m := middleware.NewMetrics()
	l := middleware.NewLedger(store, store, middleware.LedgerConfig{}, m, nil)
	hashes := []string{"h1", "h2", "h1"}

	c, err := l.Begin(ctx, "ev1", "obs", hashes)
	if err != nil {
		t.Fatal(err)
	}
	if c.Duplicate() || c.Cached(0) || c.Cached(1) || c.Cached(2) {
		t.Fatalf("first Begin: duplicate=%v cached=%v %v %v", c.Duplicate(), c.Cached(0), c.Cached(1), c.Cached(2))
	}
	c.Succeeded(ctx, 0)
	c.Succeeded(ctx, 2)
	c.Release(ctx) // action 1 failed

	c, err = l.Begin(ctx, "ev1", "obs", hashes)
	if err != nil {
		t.Fatal(err)
	}
	if c.Duplicate() || !c.Cached(0) || c.Cached(1) || !c.Cached(2) {
		t.Fatalf("Begin after a partial failure: duplicate=%v cached=%v %v %v; want false true false true",
			c.Duplicate(), c.Cached(0), c.Cached(1), c.Cached(2))
	}
	c.Succeeded(ctx, 1)
	c.Commit(ctx)
	c.Commit(ctx) // harmless

	c, err = l.Begin(ctx, "ev1", "obs", hashes)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Duplicate() {
		t.Fatal("Begin after commit is not a duplicate")
	}
	// Another observer of the same event is not a duplicate.
	if c, err = l.Begin(ctx, "ev1", "other", hashes); err != nil || c.Duplicate() {
		t.Fatalf("Begin for another observer: %v, duplicate=%v", err, c.Duplicate())
	}

	for name, got := range map[string]float64{
		"dedup hits":   ledgerCount(t, m.DedupHits.WithLabelValues("obs")),
		"dedup misses": ledgerCount(t, m.DedupMisses.WithLabelValues("obs")),
		"cache hits":   ledgerCount(t, m.CacheHits.WithLabelValues("obs")),
		"cache misses": ledgerCount(t, m.CacheMisses.WithLabelValues("obs")),
	} {
		want := map[string]float64{"dedup hits": 1, "dedup misses": 2, "cache hits": 2, "cache misses": 4}[name]
		if got != want {
			t.Errorf("%s = %v; want %v", name, got, want)
		}
	}
}

func TestLedgerWaitsForAnInFlightCopy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := newLedgerMemory(t)
	l := middleware.NewLedger(store, store, middleware.LedgerConfig{}, nil, nil)

	for _, tc := range []struct {
		name      string
		end       func(*middleware.Claim)
		duplicate bool
	}{
		{"first copy fails: the second runs", func(c *middleware.Claim) { c.Release(ctx) }, false},
		{"first copy succeeds: the second is a duplicate", func(c *middleware.Claim) { c.Commit(ctx) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := "ev-" + tc.name
			first, err := l.Begin(ctx, ev, "obs", nil)
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				time.Sleep(300 * time.Millisecond)
				tc.end(first)
			}()
			start := time.Now()
			second, err := l.Begin(ctx, ev, "obs", nil)
			if err != nil {
				t.Fatalf("second Begin: %v", err)
			}
			if waited := time.Since(start); waited < 250*time.Millisecond {
				t.Errorf("second Begin returned after %v, before the first copy ended", waited)
			}
			if second.Duplicate() != tc.duplicate {
				t.Errorf("second Begin: duplicate = %v; want %v", second.Duplicate(), tc.duplicate)
			}
			second.Commit(ctx)
		})
	}
}

func TestLedgerInFlightWaitEnds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := newLedgerMemory(t)
	// A short lease renewed while the first copy runs: the second copy
	// must not take over, and gives up after InFlightWait.
	l := middleware.NewLedger(store, store, middleware.LedgerConfig{Lease: 150 * time.Millisecond, InFlightWait: 600 * time.Millisecond}, nil, nil)
	first, err := l.Begin(ctx, "ev", "obs", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Release(ctx)
	if _, err := l.Begin(ctx, "ev", "obs", nil); !errors.Is(err, middleware.ErrInFlight) {
		t.Fatalf("Begin while another copy runs for longer than InFlightWait = %v; want ErrInFlight", err)
	}

	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := l.Begin(cctx, "ev", "obs", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Begin with a short ctx = %v; want its error", err)
	}
}

func TestLedgerLeaseOfADeadOwnerExpires(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := newLedgerMemory(t)
	// A claim made directly in the store, never renewed: a crashed process.
	if _, err := store.Reserve(ctx, stores.DedupKey("ev", "obs"), "dead", 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	l := middleware.NewLedger(store, store, middleware.LedgerConfig{}, nil, nil)
	c, err := l.Begin(ctx, "ev", "obs", nil)
	if err != nil || c.Duplicate() {
		t.Fatalf("Begin after the dead owner's lease = %v, duplicate=%v; want a claim", err, c != nil && c.Duplicate())
	}
	c.Commit(ctx)
}

// flakyStore fails every call while down is set, and counts calls.
type flakyStore struct {
	*stores.MemoryStore
	down                                      atomic.Bool
	reserves, lookups, reserveLookups, stores atomic.Int32
}

var errDown = errors.New("store down")

func (f *flakyStore) Reserve(ctx context.Context, key, owner string, lease time.Duration) (stores.Reservation, error) {
	f.reserves.Add(1)
	if f.down.Load() {
		return 0, errDown
	}
	return f.MemoryStore.Reserve(ctx, key, owner, lease)
}

func (f *flakyStore) Commit(ctx context.Context, key, owner string, window time.Duration) error {
	if f.down.Load() {
		return errDown
	}
	return f.MemoryStore.Commit(ctx, key, owner, window)
}

func (f *flakyStore) Lookup(ctx context.Context, keys ...string) ([]bool, error) {
	f.lookups.Add(1)
	if f.down.Load() {
		return nil, errDown
	}
	return f.MemoryStore.Lookup(ctx, keys...)
}

func (f *flakyStore) Store(ctx context.Context, key string, ttl time.Duration) error {
	f.stores.Add(1)
	if f.down.Load() {
		return errDown
	}
	return f.MemoryStore.Store(ctx, key, ttl)
}

func (f *flakyStore) ReserveLookup(ctx context.Context, key, owner string, lease time.Duration, keys []string) (stores.ReserveLookupResult, error) {
	f.reserveLookups.Add(1)
	if f.down.Load() {
		return stores.ReserveLookupResult{ReserveErr: errDown, LookupErr: errDown}, nil
	}
	return f.MemoryStore.ReserveLookup(ctx, key, owner, lease, keys)
}

func TestLedgerFailsOpen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := &flakyStore{MemoryStore: newLedgerMemory(t)}
	m := middleware.NewMetrics()
	var logs testenv.LogBuffer
	l := middleware.NewLedger(store, store, middleware.LedgerConfig{WarnEvery: time.Hour}, m,
		slog.New(slog.NewTextHandler(&logs, nil)))

	store.down.Store(true)
	for range 5 {
		c, err := l.Begin(ctx, "ev", "obs", []string{"h"})
		if err != nil {
			t.Fatalf("Begin with the store down: %v", err)
		}
		if c.Duplicate() || c.Cached(0) {
			t.Fatal("Begin with the store down skipped work")
		}
		c.Succeeded(ctx, 0)
		c.Commit(ctx)
	}
	if got := ledgerCount(t, m.DedupErrors); got < 5 {
		t.Errorf("dedup errors = %v; want at least 5", got)
	}
	if got := ledgerCount(t, m.CacheErrors); got < 5 {
		t.Errorf("cache errors = %v; want at least 5", got)
	}
	out := logs.String()
	if n := strings.Count(out, "dedup store failing"); n != 1 {
		t.Errorf("%d dedup warnings within WarnEvery; want 1:\n%s", n, out)
	}
	if n := strings.Count(out, "result cache failing"); n != 1 {
		t.Errorf("%d cache warnings within WarnEvery; want 1:\n%s", n, out)
	}

	// Back up: dedup works again.
	store.down.Store(false)
	c, err := l.Begin(ctx, "ev2", "obs", []string{"h"})
	if err != nil || c.Duplicate() {
		t.Fatalf("Begin after recovery: %v", err)
	}
	c.Commit(ctx)
	if c, err = l.Begin(ctx, "ev2", "obs", []string{"h"}); err != nil || !c.Duplicate() {
		t.Fatalf("duplicate after recovery: %v, duplicate=%v", err, c != nil && c.Duplicate())
	}
}

func TestLedgerAsksOneStoreOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := &flakyStore{MemoryStore: newLedgerMemory(t)}
	l := middleware.NewLedger(store, store, middleware.LedgerConfig{}, nil, nil)
	c, err := l.Begin(ctx, "ev", "obs", []string{"a", "b", "c"})
	if err != nil {
		t.Fatal(err)
	}
	c.Commit(ctx)
	if r, lk, rl := store.reserves.Load(), store.lookups.Load(), store.reserveLookups.Load(); r != 0 || lk != 0 || rl != 1 {
		t.Errorf("Begin made %d Reserve, %d Lookup and %d ReserveLookup calls; want one ReserveLookup", r, lk, rl)
	}

	// Two different stores: one call each.
	other := &flakyStore{MemoryStore: newLedgerMemory(t)}
	l = middleware.NewLedger(store, other, middleware.LedgerConfig{}, nil, nil)
	if _, err := l.Begin(ctx, "ev2", "obs", []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if store.reserves.Load() != 1 || other.lookups.Load() != 1 {
		t.Errorf("split stores: %d Reserve on the dedup store, %d Lookup on the cache; want 1 and 1", store.reserves.Load(), other.lookups.Load())
	}
}

func TestLedgerWithoutStores(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	l := middleware.NewLedger(nil, nil, middleware.LedgerConfig{}, nil, nil)
	for range 2 {
		c, err := l.Begin(ctx, "ev", "obs", []string{"h"})
		if err != nil || c.Duplicate() || c.Cached(0) {
			t.Fatalf("Begin without stores: %v", err)
		}
		c.Succeeded(ctx, 0)
		c.Commit(ctx)
	}
}

func TestCacheKeys(t *testing.T) {
	t.Parallel()
	got := stores.CacheKeys("ev", "obs", []string{"a", "b", "a", "a"})
	want := []string{"cache:{ev}:obs:a", "cache:{ev}:obs:b", "cache:{ev}:obs:a#1", "cache:{ev}:obs:a#2"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("CacheKeys = %v; want %v", got, want)
	}
	// Reordering keeps each action's key.
	if k := stores.CacheKeys("ev", "obs", []string{"b", "a"}); k[0] != want[1] || k[1] != want[0] {
		t.Errorf("reordered CacheKeys = %v", k)
	}
}

// ledgerCount reads a counter.
func ledgerCount(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// countingCache counts the result-cache writes that reach the store.
type countingCache struct {
	*stores.MemoryStore
	stores atomic.Int64
}

func (c *countingCache) Store(ctx context.Context, key string, ttl time.Duration) error {
	c.stores.Add(1)
	return c.MemoryStore.Store(ctx, key, ttl)
}

// TestLedgerSingleActionStoresOnlyWhenReleased: with one action, a
// success followed by Commit writes no cache entry (the commit records
// the event), while a success followed by Release (the run was cut
// short) still writes it, so a redelivery skips the action.
func TestLedgerSingleActionStoresOnlyWhenReleased(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := newLedgerMemory(t)
	cache := &countingCache{MemoryStore: store}
	l := middleware.NewLedger(store, cache, middleware.LedgerConfig{}, nil, nil)

	c, err := l.Begin(ctx, "ev1", "obs", []string{"h"})
	if err != nil {
		t.Fatal(err)
	}
	c.Succeeded(ctx, 0)
	c.Commit(ctx)
	if n := cache.stores.Load(); n != 0 {
		t.Errorf("success then commit wrote %d cache entries; want 0", n)
	}
	if c, _ = l.Begin(ctx, "ev1", "obs", []string{"h"}); !c.Duplicate() {
		t.Fatal("committed event is not a duplicate")
	}

	c, err = l.Begin(ctx, "ev2", "obs", []string{"h"})
	if err != nil {
		t.Fatal(err)
	}
	c.Succeeded(ctx, 0)
	c.Release(ctx)
	if n := cache.stores.Load(); n != 1 {
		t.Errorf("success then release wrote %d cache entries; want 1", n)
	}
	c, err = l.Begin(ctx, "ev2", "obs", []string{"h"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Duplicate() || !c.Cached(0) {
		t.Fatalf("after release: duplicate=%v cached=%v; want the action cached", c.Duplicate(), c.Cached(0))
	}
}

// deadlineStore records whether its Reserve and Commit calls had a
// deadline; remote says it is not in this process.
type deadlineStore struct {
	*stores.MemoryStore
	remote    bool
	deadlines []bool
}

func (d *deadlineStore) InProcess() bool { return !d.remote }

func (d *deadlineStore) Reserve(ctx context.Context, key, owner string, lease time.Duration) (stores.Reservation, error) {
	_, ok := ctx.Deadline()
	d.deadlines = append(d.deadlines, ok)
	return d.MemoryStore.Reserve(ctx, key, owner, lease)
}

func (d *deadlineStore) Commit(ctx context.Context, key, owner string, window time.Duration) error {
	_, ok := ctx.Deadline()
	d.deadlines = append(d.deadlines, ok)
	return d.MemoryStore.Commit(ctx, key, owner, window)
}

// A store across the network gets StoreTimeout on each call, so that a
// hanging one fails open; one in this process gets none.
func TestLedgerBoundsOnlyStoresOutOfProcess(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, remote := range []bool{true, false} {
		store := &deadlineStore{MemoryStore: newLedgerMemory(t), remote: remote}
		l := middleware.NewLedger(store, nil, middleware.LedgerConfig{}, nil, nil)
		c, err := l.Begin(ctx, "ev", "obs", nil)
		if err != nil {
			t.Fatal(err)
		}
		c.Commit(ctx)
		if len(store.deadlines) != 2 {
			t.Fatalf("remote=%v: %d calls; want Reserve and Commit", remote, len(store.deadlines))
		}
		for i, had := range store.deadlines {
			if had != remote {
				t.Errorf("remote=%v: call %d had a deadline: %v; want %v", remote, i, had, remote)
			}
		}
	}
}

// hangingCommitStore is a store across the network whose Commit hangs
// until its context ends.
type hangingCommitStore struct {
	*stores.MemoryStore
	commits atomic.Int64
}

func (h *hangingCommitStore) InProcess() bool { return false }

func (h *hangingCommitStore) Commit(ctx context.Context, _, _ string, _ time.Duration) error {
	h.commits.Add(1)
	<-ctx.Done()
	return ctx.Err()
}

// The Commits of many events share their deadlines' contexts; each still
// gives up StoreTimeout (and a little more) after it started.
func TestLedgerCommitBoundedByStoreTimeout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store := &hangingCommitStore{MemoryStore: newLedgerMemory(t)}
	const timeout = 200 * time.Millisecond
	l := middleware.NewLedger(store, nil, middleware.LedgerConfig{StoreTimeout: timeout}, nil, nil)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * 20 * time.Millisecond) // some share a context, some do not
			c, err := l.Begin(ctx, fmt.Sprint("ev", i), "obs", nil)
			if err != nil {
				t.Error(err)
				return
			}
			start := time.Now()
			c.Commit(ctx)
			if d := time.Since(start); d < timeout || d > timeout+time.Second {
				t.Errorf("Commit %d gave up after %v; want about %v", i, d, timeout)
			}
		}()
	}
	wg.Wait()
	if n := store.commits.Load(); n != 20 {
		t.Errorf("%d commits; want 20", n)
	}
}

// hangingReserveStore is a store across the network whose Reserve hangs
// until its context ends.
type hangingReserveStore struct{ *stores.MemoryStore }

func (h hangingReserveStore) InProcess() bool { return false }

func (h hangingReserveStore) Reserve(ctx context.Context, _, _ string, _ time.Duration) (stores.Reservation, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

// Begin on a hanging store gives up after StoreTimeout and lets the event
// through (fail open), also when the event's context has no deadline.
func TestLedgerBeginBoundedByStoreTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 200 * time.Millisecond
	l := middleware.NewLedger(hangingReserveStore{newLedgerMemory(t)}, nil, middleware.LedgerConfig{StoreTimeout: timeout}, nil, nil)
	start := time.Now()
	c, err := l.Begin(context.Background(), "ev", "obs", nil)
	if err != nil || c.Duplicate() {
		t.Fatalf("Begin on a hanging store = %v; want a claim that runs the observer", err)
	}
	if d := time.Since(start); d < timeout || d > timeout+time.Second {
		t.Errorf("Begin gave up after %v; want about %v", d, timeout)
	}
}
