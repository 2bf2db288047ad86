package stores

import (
	"context"
	"strconv"
	"time"
)

// ResultCache remembers, per event and action, that the action
// succeeded, so that a retry of an observer after a partial failure does
// not repeat the actions that already took effect. Only successes are
// stored. Keys are opaque strings (see CacheKeys). Every method is one
// round trip and safe for concurrent use; callers fail open on errors.
type ResultCache interface {
	// Lookup reports, for each key in order, whether a success is stored.
	Lookup(ctx context.Context, keys ...string) ([]bool, error)
	// Store records a success under key for ttl.
	Store(ctx context.Context, key string, ttl time.Duration) error
}

// ReserveLooker is implemented by a store that holds both the dedup
// ledger and the result cache and can answer one event's Reserve and
// Lookup in a single round trip (a Redis pipeline, a PostgreSQL batch).
// The Ledger uses it when the dedup store and the cache are the same
// value.
type ReserveLooker interface {
	ReserveLookup(ctx context.Context, key, owner string, lease time.Duration, cacheKeys []string) (ReserveLookupResult, error)
}

// ReserveLookupResult is the answer of ReserveLookup. The two halves
// fail separately, because the caller fails open on each and counts
// them apart.
type ReserveLookupResult struct {
	Reservation Reservation
	ReserveErr  error
	Hits        []bool
	LookupErr   error
}

// CacheKeys returns the result-cache keys of an observer's actions for
// one event: event id + observer + the action's key (ActionKeys).
func CacheKeys(eventID, observer string, actionHashes []string) []string {
	keys := ActionKeys(actionHashes)
	for i, k := range keys {
		keys[i] = "cache:{" + eventID + "}:" + observer + ":" + k
	}
	return keys
}

// ActionKeys returns the keys of an observer's actions: each action's
// config hash, with a "#n" suffix on the repeats, so that two actions of
// one observer with the same config get distinct keys, while reordering
// the actions keeps each key.
func ActionKeys(actionHashes []string) []string {
	keys := make([]string, len(actionHashes))
	seen := make(map[string]int, len(actionHashes))
	for i, h := range actionHashes {
		k := h
		if n := seen[h]; n > 0 {
			k += "#" + strconv.Itoa(n)
		}
		seen[h]++
		keys[i] = k
	}
	return keys
}
