package event

import (
	"encoding/json"
	"strconv"
	"time"
)

// Envelope is Event as it is encoded (the same JSON names), with data and
// changes kept as raw JSON. The captures build it: their row images are
// JSON already (jsonb columns, or values converted from the write-ahead
// log), and decoding them into maps only to encode them again was most
// of a capture's CPU time. TestEnvelopeMatchesEvent keeps the two types
// in step.
type Envelope struct {
	ID        string          `json:"id"`
	Type      Type            `json:"event_type"`
	Entity    string          `json:"entity_type"`
	EntityID  string          `json:"entity_id"`
	Data      json.RawMessage `json:"data"`
	Changes   json.RawMessage `json:"changes,omitempty"`
	UserID    string          `json:"user_id,omitempty"`
	TenantID  string          `json:"tenant_id,omitempty"`
	Timestamp time.Time       `json:"timestamp"`
	Seq       int64           `json:"seq,omitempty"`
	Source    string          `json:"source,omitempty"`
}

// Key mirrors Event.Key.
func (e *Envelope) Key() string { return KeyOf(e.Source, e.Entity, e.EntityID) }

// AppendJSON appends e encoded as encoding/json encodes it, except that
// Data and Changes are copied as they are: the caller guarantees they
// are valid JSON, and encoding/json's check and compaction of them was
// most of the cost of building a message.
func (e *Envelope) AppendJSON(b []byte) []byte {
	b = appendHead(b, e.ID, e.Type, e.Entity, e.EntityID)
	b = append(b, e.Data...)
	if len(e.Changes) > 0 {
		b = append(b, `,"changes":`...)
		b = append(b, e.Changes...)
	}
	b = appendOwner(b, e.UserID, e.TenantID)
	b = append(b, `,"timestamp":"`...)
	b = e.Timestamp.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	return appendTail(b, e.Seq, e.Source)
}

// appendHead, appendOwner and appendTail write the fields an Event and
// an Envelope encode alike: up to the data's key, the optional user and
// tenant, and the optional seq and source with the closing brace.
func appendHead(b []byte, id string, t Type, entity, entityID string) []byte {
	b = append(b, `{"id":`...)
	b = AppendString(b, id)
	b = append(b, `,"event_type":`...)
	b = AppendString(b, string(t))
	b = append(b, `,"entity_type":`...)
	b = AppendString(b, entity)
	b = append(b, `,"entity_id":`...)
	b = AppendString(b, entityID)
	return append(b, `,"data":`...)
}

func appendOwner(b []byte, userID, tenantID string) []byte {
	if userID != "" {
		b = append(b, `,"user_id":`...)
		b = AppendString(b, userID)
	}
	if tenantID != "" {
		b = append(b, `,"tenant_id":`...)
		b = AppendString(b, tenantID)
	}
	return b
}

func appendTail(b []byte, seq int64, source string) []byte {
	if seq != 0 {
		b = append(b, `,"seq":`...)
		b = strconv.AppendInt(b, seq, 10)
	}
	if source != "" {
		b = append(b, `,"source":`...)
		b = AppendString(b, source)
	}
	return append(b, '}')
}
