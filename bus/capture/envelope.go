package capture

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

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

// toEnvelope turns a change-log row into the event envelope.
func (c *Config) toEnvelope(r *row) (*event.Envelope, error) {
	ev := &event.Envelope{
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
	msg := message.NewMessage(msgID, ev.AppendJSON(make([]byte, 0, 256+len(ev.Data)+len(ev.Changes))))
	for k, v := range md {
		msg.Metadata.Set(k, v)
	}
	bus.Route(msg, ev.Source, ev.Entity, ev.EntityID, ev.TenantID, ev.Type)
	delete(msg.Metadata, bus.RetryDelayMetadata)
	if r.xid != nil {
		msg.Metadata.Set(bus.XIDMetadata, *r.xid)
	}
	return msg, nil
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
	// Values of different kinds differ, and so do two strings without
	// escapes whose bytes differ: most changed columns are decided here,
	// without decoding.
	x, y = bytes.TrimSpace(x), bytes.TrimSpace(y)
	if len(x) == 0 || len(y) == 0 {
		return false
	}
	if kx, ky := jsonKind(x[0]), jsonKind(y[0]); kx != ky {
		return false
	} else if kx == '"' && !bytes.Equal(x, y) && bytes.IndexByte(x, '\\') < 0 && bytes.IndexByte(y, '\\') < 0 {
		return false
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

// jsonKind is the kind of a JSON value from its first byte: '"', '{',
// '[', 't' (true and false alike), 'n', or '0' for a number.
func jsonKind(c byte) byte {
	switch c {
	case '"', '{', '[', 'n':
		return c
	case 't', 'f':
		return 't'
	}
	return '0'
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
