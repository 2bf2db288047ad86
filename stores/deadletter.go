package stores

import (
	"context"
	"errors"
	"time"
)

// Reasons an entry is dead-lettered.
const (
	ReasonPermanent   = "permanent"   // the action failed with a permanent error
	ReasonExhausted   = "exhausted"   // the last attempt failed
	ReasonUndecodable = "undecodable" // the message is not a valid event
	ReasonCondition   = "condition"   // the observer's condition failed to evaluate
	// ReasonParked: the event did not run, because an earlier event of
	// its entity failed for the observer (on_failure = "park") and the
	// entity is parked.
	ReasonParked = "parked"
)

// DeadLetter is one entry of the dead-letter store.
type DeadLetter struct {
	// ID identifies the entry in its store.
	ID string `json:"id"`
	// EventID is the event's id; empty when the message was undecodable.
	EventID string `json:"event_id,omitempty"`
	// Observer and Action name what failed; Action is "observer/index:type".
	Observer string `json:"observer,omitempty"`
	Action   string `json:"action,omitempty"`
	// Reason is one of the Reason constants; Error is the last error.
	Reason string `json:"reason"`
	Error  string `json:"error"`
	// Attempts counts the attempts made.
	Attempts int `json:"attempts"`
	// FirstFailure and LastFailure bound the failures.
	FirstFailure time.Time `json:"first_failure"`
	LastFailure  time.Time `json:"last_failure"`
	// Topic is the bus topic the message came from.
	Topic string `json:"topic"`
	// Payload is the message as it was on the bus: the event's JSON, or
	// the raw bytes that did not decode. Lists (GET /v1/dlq) leave it out
	// and give its size in PayloadBytes instead.
	Payload      []byte `json:"payload,omitempty"`
	PayloadBytes int    `json:"payload_bytes,omitempty"`
	// Succeeded are the observer's actions that had succeeded for the
	// event when it failed: a replay skips them, however long after,
	// unless it asks to run every action again.
	Succeeded []SucceededAction `json:"succeeded,omitempty"`
	// Key is the event's entity, "source/entity_type/entity_id"
	// (ParkKey); set on the entries of an observer whose on_failure is
	// "park".
	Key string `json:"key,omitempty"`
	// Parked marks an entry of a parked group: the events of one
	// (Observer, Key), the failed head first, kept in the store's order
	// until `millrace dlq replay --entity` runs them in that order
	// (docs/adr/0014-park-the-key.md).
	Parked bool `json:"parked,omitempty"`
}

// ParkKey is the entity key of a parked group: the event's ordering key
// (event.KeyOf) written "source/entity_type/entity_id", the form `millrace
// dlq list` shows and `--entity` takes. The source is empty for a
// single-database deployment: "/Order/42".
func ParkKey(source, entity, entityID string) string {
	return source + "/" + entity + "/" + entityID
}

// SucceededAction is an action of a dead letter's observer that had
// succeeded for its event.
type SucceededAction struct {
	// Index is the action's place in the observer's list then.
	Index int `json:"index"`
	// Key is the action's config hash, "#n" added on the repeats
	// (ActionKeys): what a replay matches, so that an action whose config
	// changed since runs again, and reordering the list changes nothing.
	Key string `json:"key"`
}

// DeadLetterFilter selects entries for List. Zero fields match all.
type DeadLetterFilter struct {
	Observer string
	Since    time.Time
	// Key keeps the entries of this entity (DeadLetter.Key).
	Key string
	// Parked keeps only the entries of parked groups.
	Parked bool
	// Limit caps the result; 0 means 100.
	Limit int
}

// ErrNotFound is returned for an unknown dead-letter id.
var ErrNotFound = errors.New("dead letter not found")

// DeadLetters is the durable dead-letter store of a topology. All methods
// are safe for concurrent use. An entry is durable once Put returned nil;
// the message that caused it may then be acked.
type DeadLetters interface {
	Put(ctx context.Context, dl DeadLetter) (id string, err error)
	// List returns entries, oldest first.
	List(ctx context.Context, f DeadLetterFilter) ([]DeadLetter, error)
	Get(ctx context.Context, id string) (DeadLetter, error)
	Delete(ctx context.Context, ids ...string) error
	Purge(ctx context.Context) (int, error)
	Count(ctx context.Context) (int, error)
}
