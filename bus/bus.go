package bus

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/event"
)

// Metadata keys a bus reads from messages.
const (
	// KeyMetadata is the ordering key of a message (event.Event.Key):
	// messages with the same key are handled one after another, in order.
	KeyMetadata = "millrace_key"
	// SubjectMetadata, when set, is appended to the topic's subject on
	// the JetStream bus ("orders_db.Order.UPDATE", see Subject).
	SubjectMetadata = "millrace_subject"
	// RetryDelayMetadata is a duration ("250ms") a handler sets on a
	// message before it nacks it: the bus redelivers after that delay.
	RetryDelayMetadata = "millrace_retry_delay"
	// ObserverMetadata restricts handling to the named observer. Replays
	// from the dead-letter store set it, so that the observers that
	// already succeeded are not run again.
	ObserverMetadata = "millrace_observer"
	// SucceededMetadata goes with ObserverMetadata on a replay: the keys
	// (stores.ActionKeys), comma-separated, of the observer's actions
	// that had succeeded before the event was dead-lettered. They are not
	// run again, even once the result cache has forgotten them.
	SucceededMetadata = "millrace_succeeded"
	// AllActionsMetadata, "true" on a replay, runs every action of the
	// observer again: the result cache's record of earlier successes is
	// ignored too (millrace dlq replay --all-actions).
	AllActionsMetadata = "millrace_all_actions"
	// ParkMetadata goes with ObserverMetadata on the message that
	// releases a parked entity: "replay" runs the entity's parked group
	// for the observer, in order; "skip" first takes the head out of it.
	// The message carries the head's event, and so the entity's ordering
	// key: the bus hands it to the worker that runs the entity, after the
	// entity's events published before it (docs/adr/0014-park-the-key.md).
	ParkMetadata = "millrace_park"
	// DeliveryMetadata is set by a bus on the messages it hands out: the
	// number of this delivery of the message, 1 for the first. Dead
	// letters and logs report it.
	DeliveryMetadata = "millrace_delivery"
	// TenantMetadata is the tenant of a message's event (tenant_id),
	// when it has one. The lanes share their in-flight slots between
	// tenants in turn, and the delivery limits share each endpoint.
	TenantMetadata = "millrace_tenant"
	// XIDMetadata is the id of the PostgreSQL transaction that wrote a
	// captured change, for traces and logs: the xid8 of the change-log
	// row with trigger capture, pgoutput's 32-bit xid with WAL capture.
	XIDMetadata = "millrace_xid"
)

// SetRouting sets the ordering key, subject and tenant of ev on m.
func SetRouting(m *message.Message, ev *event.Event) {
	Route(m, ev.Source, ev.Entity, ev.EntityID, ev.TenantID, ev.Type)
}

// Route is SetRouting from an event's fields.
func Route(m *message.Message, source, entity, entityID, tenant string, t event.Type) {
	m.Metadata.Set(KeyMetadata, event.KeyOf(source, entity, entityID))
	m.Metadata.Set(SubjectMetadata, Subject(source, entity, t))
	if tenant != "" {
		m.Metadata.Set(TenantMetadata, tenant)
	}
}

// Subject is the subject suffix of an event, "<source>.<entity>.<op>",
// each part one token (Token).
func Subject(source, entity string, t event.Type) string {
	return Token(source) + "." + Token(entity) + "." + Token(string(t))
}

// Token makes s safe as one subject token: no dots, spaces or wildcards;
// an empty s is "_".
func Token(s string) string {
	if s == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', ' ', '*', '>', '\t', '\r', '\n':
			return '_'
		}
		return r
	}, s)
}

// KeyFromPayload is the ordering key of an event envelope (event.KeyOf
// of its source, entity_type and entity_id), for a message whose
// producer did not set KeyMetadata. ok is false when the payload is not
// a JSON object with an entity_type and an entity_id.
func KeyFromPayload(payload []byte) (key string, ok bool) {
	var e struct {
		Source   string `json:"source"`
		Entity   string `json:"entity_type"`
		EntityID string `json:"entity_id"`
	}
	if json.Unmarshal(payload, &e) != nil || e.Entity == "" || e.EntityID == "" {
		return "", false
	}
	return event.KeyOf(e.Source, e.Entity, e.EntityID), true
}

// PartitionKey is the key that places m in a partition: its ordering
// key, or its UUID when it has none (such messages have no order to
// keep, so they spread over the partitions).
func PartitionKey(m *message.Message) string {
	if key := m.Metadata.Get(KeyMetadata); key != "" {
		return key
	}
	return m.UUID
}

// AcquireHook runs when a subscriber that leases partitions (ADR 12) has
// taken partition p of n, before it consumes it.
type AcquireHook func(ctx context.Context, p, n int) error

// Bind returns h for a subscriber of n partitions, in the form
// partition.Config.Acquired takes; nil when h is nil.
func (h AcquireHook) Bind(n int) func(ctx context.Context, p int) error {
	if h == nil {
		return nil
	}
	return func(ctx context.Context, p int) error { return h(ctx, p, n) }
}

// PartitionWatcher is a subscriber that leases partitions and runs a
// hook on each it takes, before consuming it. Set the hook before
// Subscribe.
type PartitionWatcher interface {
	OnAcquire(hook AcquireHook)
}
