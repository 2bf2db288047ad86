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
	b = append(b, `{"id":`...)
	b = AppendString(b, e.ID)
	b = append(b, `,"event_type":`...)
	b = AppendString(b, string(e.Type))
	b = append(b, `,"entity_type":`...)
	b = AppendString(b, e.Entity)
	b = append(b, `,"entity_id":`...)
	b = AppendString(b, e.EntityID)
	b = append(b, `,"data":`...)
	b = append(b, e.Data...)
	if len(e.Changes) > 0 {
		b = append(b, `,"changes":`...)
		b = append(b, e.Changes...)
	}
	if e.UserID != "" {
		b = append(b, `,"user_id":`...)
		b = AppendString(b, e.UserID)
	}
	if e.TenantID != "" {
		b = append(b, `,"tenant_id":`...)
		b = AppendString(b, e.TenantID)
	}
	b = append(b, `,"timestamp":"`...)
	b = e.Timestamp.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if e.Seq != 0 {
		b = append(b, `,"seq":`...)
		b = strconv.AppendInt(b, e.Seq, 10)
	}
	if e.Source != "" {
		b = append(b, `,"source":`...)
		b = AppendString(b, e.Source)
	}
	return append(b, '}')
}
