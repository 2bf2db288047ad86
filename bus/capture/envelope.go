package capture

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/millrace/millrace/bus"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/millrace/millrace/event"
)

// EventIDMetadata holds, in a change-log row's metadata, the id of the
// event when the row's own id differs: a dead-letter replay appends the
// event again under a new row id, since the change log keeps each id once.
const EventIDMetadata = "millrace_event_id"

// idNamespace derives a stable event id for FraiseQL rows without one, so
// that a replayed row keeps its id.
var idNamespace = uuid.MustParse("5d0b7f8e-3c1a-4e63-9a57-6f2b1f0c9e41")

// envelope is event.Event as it is encoded (the same JSON names), with
// data and changes kept as raw JSON: the images come out of PostgreSQL as
// JSON already, and decoding them into maps only to encode them again
// was most of the reader's CPU time. TestEnvelopeMatchesEventEncode keeps
// the two in step.
type envelope struct {
	ID        string          `json:"id"`
	Type      event.Type      `json:"event_type"`
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

// Key mirrors event.Event.Key.
func (e *envelope) Key() string { return event.KeyOf(e.Source, e.Entity, e.EntityID) }

// toEnvelope turns a change-log row into the event envelope.
func (c *Config) toEnvelope(r *row) (*envelope, error) {
	ev := &envelope{
		ID:        r.id,
		Type:      event.Type(strings.ToUpper(r.op)),
		Entity:    r.entity,
		EntityID:  r.entityID,
		Timestamp: r.createdAt.UTC(),
		Seq:       r.pos,
		Source:    c.Source,
	}
	if ev.ID == "" {
		ev.ID = uuid.NewSHA1(idNamespace, fmt.Appendf(nil, "%s\x00%s\x00%d", c.Source, c.fraiseqlTable(), r.pos)).String()
	}
	if c.Mode == ModeFraiseQL {
		switch ev.Type {
		case "NOOP", "READ":
			ev.Type = event.Custom
		}
	}
	if r.seq != nil {
		ev.Seq = *r.seq
	}
	if r.source != nil && *r.source != "" {
		ev.Source = *r.source
	}
	if r.userID != nil {
		ev.UserID = *r.userID
	}
	if r.tenantID != nil {
		ev.TenantID = *r.tenantID
	}
	after, before := isSet(r.after), isSet(r.before)
	var data []byte
	switch {
	case ev.Type == event.Delete && before:
		data = r.before
	case after:
		data = r.after
	case before:
		data = r.before
	}
	var err error
	if ev.Data, err = asObject(data); err != nil {
		return nil, fmt.Errorf("data: %w", err)
	}
	switch {
	case isSet(r.changes):
		ev.Changes = r.changes
	case ev.Type == event.Update && before && after:
		if ev.Changes, err = diff(r.before, r.after); err != nil {
			return nil, fmt.Errorf("changes: %w", err)
		}
	}
	return ev, nil
}

// toMessage builds the message of a row: the change id as UUID, the event
// as payload, and the ordering key and subject the buses read.
func (c *Config) toMessage(r *row) (*message.Message, error) {
	ev, err := c.toEnvelope(r)
	if err != nil {
		return nil, fmt.Errorf("change %s at position %d: %w", r.id, r.pos, err)
	}
	var md map[string]string
	if len(r.metadata) > 0 {
		_ = json.Unmarshal(r.metadata, &md) // metadata is best effort
	}
	msgID := ev.ID
	if id := md[EventIDMetadata]; id != "" && uuid.Validate(id) == nil {
		ev.ID = id // a replayed event: the row's id is the message's
		delete(md, EventIDMetadata)
	}
	msg := message.NewMessage(msgID, ev.appendJSON(make([]byte, 0, 256+len(ev.Data)+len(ev.Changes))))
	for k, v := range md {
		msg.Metadata.Set(k, v)
	}
	bus.Route(msg, ev.Source, ev.Entity, ev.EntityID, ev.TenantID, ev.Type)
	delete(msg.Metadata, bus.RetryDelayMetadata)
	return msg, nil
}

// appendJSON appends e encoded as encoding/json encodes it, but with
// data and changes copied as they are: they come from jsonb columns,
// valid JSON already, and encoding/json's check and compaction of them
// was most of the cost of building a message.
func (e *envelope) appendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, e.ID)
	b = append(b, `,"event_type":`...)
	b = appendString(b, string(e.Type))
	b = append(b, `,"entity_type":`...)
	b = appendString(b, e.Entity)
	b = append(b, `,"entity_id":`...)
	b = appendString(b, e.EntityID)
	b = append(b, `,"data":`...)
	b = append(b, e.Data...)
	if len(e.Changes) > 0 {
		b = append(b, `,"changes":`...)
		b = append(b, e.Changes...)
	}
	if e.UserID != "" {
		b = append(b, `,"user_id":`...)
		b = appendString(b, e.UserID)
	}
	if e.TenantID != "" {
		b = append(b, `,"tenant_id":`...)
		b = appendString(b, e.TenantID)
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
		b = appendString(b, e.Source)
	}
	return append(b, '}')
}

// appendString appends s as a JSON string. Printable ASCII without a
// quote, backslash or HTML character is copied; anything else goes
// through encoding/json, escaping as it does.
func appendString(b []byte, s string) []byte {
	for i := range len(s) {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// key is the ordering key of a row's event (event.Event.Key) without
// building the event.
func (c *Config) key(r *row) string {
	source := c.Source
	if r.source != nil && *r.source != "" {
		source = *r.source
	}
	return event.KeyOf(source, r.entity, r.entityID)
}

func isSet(b []byte) bool { return len(b) > 0 && !bytes.Equal(b, []byte("null")) }

// asObject returns b when it is a JSON object, {} when it is empty or
// null, and any other JSON value wrapped as {"value": ...}.
func asObject(b []byte) (json.RawMessage, error) {
	b = bytes.TrimSpace(b)
	switch {
	case !isSet(b):
		return json.RawMessage("{}"), nil
	case b[0] == '{':
		return b, nil
	}
	return json.Marshal(map[string]json.RawMessage{"value": b})
}

// diff returns {field: {old, new}} for the changed, added (old null) and
// removed (new null) top-level fields of two JSON objects. Values that
// differ in text but not in value (10.5 and 10.50) are unchanged.
func diff(before, after []byte) (json.RawMessage, error) {
	var b, a map[string]json.RawMessage
	if err := json.Unmarshal(before, &b); err != nil {
		return nil, fmt.Errorf("before image: %w", err)
	}
	if err := json.Unmarshal(after, &a); err != nil {
		return nil, fmt.Errorf("after image: %w", err)
	}
	type change struct {
		Old json.RawMessage `json:"old"`
		New json.RawMessage `json:"new"`
	}
	null := json.RawMessage("null")
	out := map[string]change{}
	for k, nv := range a {
		ov, ok := b[k]
		switch {
		case !ok:
			out[k] = change{Old: null, New: nv}
		case !sameJSON(ov, nv):
			out[k] = change{Old: ov, New: nv}
		}
	}
	for k, ov := range b {
		if _, ok := a[k]; !ok {
			out[k] = change{Old: ov, New: null}
		}
	}
	return json.Marshal(out)
}

// sameJSON compares two JSON values by value, numbers numerically.
func sameJSON(x, y json.RawMessage) bool {
	if bytes.Equal(x, y) {
		return true
	}
	vx, err := event.DecodeValue(x)
	if err != nil {
		return false
	}
	vy, err := event.DecodeValue(y)
	if err != nil {
		return false
	}
	return equal(vx, vy)
}

// equal is reflect.DeepEqual for decoded JSON, except that numbers are
// compared by value: 1 and 1.0 are equal.
func equal(x, y any) bool {
	switch a := x.(type) {
	case int64:
		switch b := y.(type) {
		case int64:
			return a == b
		case float64:
			return float64(a) == b
		}
		return false
	case float64:
		switch b := y.(type) {
		case int64:
			return a == float64(b)
		case float64:
			return a == b
		}
		return false
	case map[string]any:
		b, ok := y.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k, v := range a {
			w, ok := b[k]
			if !ok || !equal(v, w) {
				return false
			}
		}
		return true
	case []any:
		b, ok := y.([]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range a {
			if !equal(a[i], b[i]) {
				return false
			}
		}
		return true
	}
	return x == y
}
