package stores

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// MemoryStoreConfig configures a MemoryStore.
type MemoryStoreConfig struct {
	// MaxEntries bounds the keys held (dedup and cache together). When
	// full, expired keys are dropped first; if none expired, new keys
	// are refused with ErrStoreFull and callers fail open. Default
	// 1,000,000.
	MaxEntries int
	// JanitorInterval is how often expired keys are dropped. Default 30s.
	JanitorInterval time.Duration
}

// SetDefaults fills the defaults.
func (c *MemoryStoreConfig) SetDefaults() {
	if c.MaxEntries == 0 {
		c.MaxEntries = 1_000_000
	}
	if c.JanitorInterval == 0 {
		c.JanitorInterval = 30 * time.Second
	}
}

// Validate checks the bounds.
func (c MemoryStoreConfig) Validate() error {
	var errs []error
	if c.MaxEntries < 1 {
		errs = append(errs, errors.New("memory store: MaxEntries must be at least 1"))
	}
	if c.JanitorInterval <= 0 {
		errs = append(errs, errors.New("memory store: JanitorInterval must be positive"))
	}
	return errors.Join(errs...)
}

// ErrStoreFull is returned by a MemoryStore that holds MaxEntries live
// keys.
var ErrStoreFull = errors.New("memory store full")

// MemoryStore is the dedup ledger and result cache of one process (the
// embedded topology): a map under a mutex, bounded, with a janitor that
// drops expired keys. Its state is lost on restart, and processes do not
// share it. Close stops the janitor.
type MemoryStore struct {
	cfg MemoryStoreConfig

	mu      sync.Mutex
	entries map[string]memoryEntry

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

type memoryEntry struct {
	owner   string // holder while in flight; "" when done
	done    bool
	expires time.Time
}

var (
	_ DedupStore    = (*MemoryStore)(nil)
	_ ResultCache   = (*MemoryStore)(nil)
	_ ReserveLooker = (*MemoryStore)(nil)
)

// NewMemoryStore returns a store and starts its janitor.
func NewMemoryStore(cfg MemoryStoreConfig) (*MemoryStore, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &MemoryStore{cfg: cfg, entries: map[string]memoryEntry{}, stop: make(chan struct{}), done: make(chan struct{})}
	go s.janitor()
	return s, nil
}

func (s *MemoryStore) janitor() {
	defer close(s.done)
	t := time.NewTicker(s.cfg.JanitorInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.mu.Lock()
			s.sweepLocked(now)
			s.mu.Unlock()
		}
	}
}

func (s *MemoryStore) sweepLocked(now time.Time) {
	for k, e := range s.entries {
		if !now.Before(e.expires) {
			delete(s.entries, k)
		}
	}
}

// Close stops the janitor and waits for it. It is safe to call twice.
func (s *MemoryStore) Close() error {
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.done
	return nil
}

// Len returns the number of keys held, expired ones included until the
// janitor drops them.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// putLocked stores e under key, making room when the map is full.
func (s *MemoryStore) putLocked(key string, e memoryEntry, now time.Time) error {
	if _, ok := s.entries[key]; !ok && len(s.entries) >= s.cfg.MaxEntries {
		s.sweepLocked(now)
		if len(s.entries) >= s.cfg.MaxEntries {
			return fmt.Errorf("%w (%d keys)", ErrStoreFull, s.cfg.MaxEntries)
		}
	}
	s.entries[key] = e
	return nil
}

func (s *MemoryStore) live(key string, now time.Time) (memoryEntry, bool) {
	e, ok := s.entries[key]
	if !ok || !now.Before(e.expires) {
		return memoryEntry{}, false
	}
	return e, true
}

// Reserve implements DedupStore.
func (s *MemoryStore) Reserve(ctx context.Context, key, owner string, lease time.Duration) (Reservation, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reserveLocked(key, owner, lease, now)
}

func (s *MemoryStore) reserveLocked(key, owner string, lease time.Duration, now time.Time) (Reservation, error) {
	if e, ok := s.live(key, now); ok {
		if e.done {
			return Done, nil
		}
		return InFlight, nil
	}
	if err := s.putLocked(key, memoryEntry{owner: owner, expires: now.Add(lease)}, now); err != nil {
		return 0, err
	}
	return Claimed, nil
}

// Extend implements DedupStore.
func (s *MemoryStore) Extend(ctx context.Context, key, owner string, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.live(key, now)
	if !ok || e.done || e.owner != owner {
		return ErrLeaseLost
	}
	e.expires = now.Add(lease)
	s.entries[key] = e
	return nil
}

// Commit implements DedupStore.
func (s *MemoryStore) Commit(ctx context.Context, key, owner string, window time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.live(key, now)
	lost := ok && !e.done && e.owner != owner
	if err := s.putLocked(key, memoryEntry{done: true, expires: now.Add(window)}, now); err != nil {
		return err
	}
	if lost {
		return ErrLeaseLost
	}
	return nil
}

// Release implements DedupStore.
func (s *MemoryStore) Release(ctx context.Context, key, owner string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.entries[key]; ok && !e.done && e.owner == owner {
		delete(s.entries, key)
	}
	return nil
}

// Lookup implements ResultCache.
func (s *MemoryStore) Lookup(ctx context.Context, keys ...string) ([]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lookupLocked(keys, now), nil
}

func (s *MemoryStore) lookupLocked(keys []string, now time.Time) []bool {
	hits := make([]bool, len(keys))
	for i, k := range keys {
		e, ok := s.live(k, now)
		hits[i] = ok && e.done
	}
	return hits
}

// Store implements ResultCache.
func (s *MemoryStore) Store(ctx context.Context, key string, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.putLocked(key, memoryEntry{done: true, expires: now.Add(ttl)}, now)
}

// ReserveLookup implements ReserveLooker under one lock.
func (s *MemoryStore) ReserveLookup(ctx context.Context, key, owner string, lease time.Duration, cacheKeys []string) (ReserveLookupResult, error) {
	if err := ctx.Err(); err != nil {
		return ReserveLookupResult{}, err
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var r ReserveLookupResult
	r.Reservation, r.ReserveErr = s.reserveLocked(key, owner, lease, now)
	r.Hits = s.lookupLocked(cacheKeys, now)
	return r, nil
}

// InProcess implements InProcess: the store is a map in this process.
func (s *MemoryStore) InProcess() bool { return true }
