package stores

import (
	"context"
	"errors"
	"time"
)

// Reservation is the answer of DedupStore.Reserve.
type Reservation int

// The answers of Reserve.
const (
	// Claimed: the key was free (or its lease or window had expired); the
	// caller now holds it for the lease and must Commit or Release it.
	Claimed Reservation = iota + 1
	// Done: the key was committed within the window; the work is done
	// and the duplicate must be skipped.
	Done
	// InFlight: another owner holds the key. The caller must neither run
	// nor drop the work: it waits and asks again, because the holder may
	// still fail and release it.
	InFlight
)

// String returns "claimed", "done" or "in_flight".
func (r Reservation) String() string {
	switch r {
	case Claimed:
		return "claimed"
	case Done:
		return "done"
	case InFlight:
		return "in_flight"
	}
	return "unknown"
}

// ErrLeaseLost is returned by Extend and Commit when the key is held by
// another owner: the caller's lease expired and someone else claimed it.
// Commit has marked the key done all the same.
var ErrLeaseLost = errors.New("dedup lease lost")

// DedupStore is the dedup ledger: a key per event and observer, claimed
// before the observer runs and committed only after it succeeded.
//
// Unlike Watermill's Deduplicator, which records a key before the handler
// runs and so drops the retry of a failed message, a key here has two
// states: in flight (held by one owner for a lease) and done (kept for the
// window). A failure releases the key, so that a redelivery runs again;
// an owner that crashes loses its key when the lease expires.
//
// Keys are opaque strings (see DedupKey); owners are random tokens, one
// per attempt to run. Every method is one round trip to the store and is
// safe for concurrent use, also from several processes sharing the store.
// Implementations return errors only for store failures; callers fail
// open on them.
type DedupStore interface {
	// Reserve claims key for owner for lease, unless it is done or held.
	Reserve(ctx context.Context, key, owner string, lease time.Duration) (Reservation, error)
	// Extend renews owner's lease on key; ErrLeaseLost when key is no
	// longer owner's.
	Extend(ctx context.Context, key, owner string, lease time.Duration) error
	// Commit marks key done for window, whoever holds it: owner's work
	// was done, and the mark keeps duplicates out. It returns
	// ErrLeaseLost when another owner held the key (owner's lease had
	// expired and another delivery claimed it, and may be running the
	// same work); that owner's Commit then succeeds and its Release
	// leaves the key done.
	Commit(ctx context.Context, key, owner string, window time.Duration) error
	// Release frees key if owner holds it; otherwise it does nothing.
	Release(ctx context.Context, key, owner string) error
}

// DedupKey is the ledger key of an event and observer. The event id is
// in braces so that, on a Redis cluster, every key of one event lands in
// one hash slot and can be read in one pipeline.
func DedupKey(eventID, observer string) string {
	return "dedup:{" + eventID + "}:" + observer
}

// InProcess is implemented by a store that lives in this process
// (MemoryStore): its calls do not wait on a network or a server, so
// callers give them no deadline.
type InProcess interface {
	InProcess() bool
}
