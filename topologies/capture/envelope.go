package capture

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/topologies/jetstream"
)

// DeliveryMetadata counts the deliveries of a message in this process,
// from 1; it restarts after a crash or a takeover.
const DeliveryMetadata = "millrace_delivery"

// idNamespace derives a stable event id for FraiseQL rows without one, so
// that a replayed row keeps its id.
var idNamespace = uuid.MustParse("5d0b7f8e-3c1a-4e63-9a57-6f2b1f0c9e41")

// toEvent turns a change-log row into the event envelope.
func (c *Config) toEvent(r *row) (*event.Event, error) {
	ev := &event.Event{
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
	after, err := object(r.after)
	if err != nil {
		return nil, fmt.Errorf("after image: %w", err)
	}
	before, err := object(r.before)
	if err != nil {
		return nil, fmt.Errorf("before image: %w", err)
	}
	switch {
	case ev.Type == event.Delete && before != nil:
		ev.Data = before
	case after != nil:
		ev.Data = after
	case before != nil:
		ev.Data = before
	default:
		ev.Data = map[string]any{}
	}
	switch {
	case r.changes != nil:
		m, err := object(r.changes)
		if err != nil {
			return nil, fmt.Errorf("changes: %w", err)
		}
		ev.Changes = make(map[string]event.Change, len(m))
		for k, v := range m {
			o, _ := v.(map[string]any)
			ev.Changes[k] = event.Change{Old: o["old"], New: o["new"]}
		}
	case ev.Type == event.Update && before != nil && after != nil:
		ev.Changes = diff(before, after)
	}
	return ev, nil
}

// toMessage builds the message of a row: the change id as UUID, the event
// as payload, and the ordering key and subject the buses read.
func (c *Config) toMessage(r *row) (*message.Message, string, error) {
	ev, err := c.toEvent(r)
	if err != nil {
		return nil, "", fmt.Errorf("change %s at position %d: %w", r.id, r.pos, err)
	}
	payload, err := event.Encode(ev)
	if err != nil {
		return nil, "", fmt.Errorf("change %s at position %d: %w", r.id, r.pos, err)
	}
	msg := message.NewMessage(ev.ID, payload)
	if len(r.metadata) > 0 {
		var md map[string]string
		if json.Unmarshal(r.metadata, &md) == nil {
			for k, v := range md {
				msg.Metadata.Set(k, v)
			}
		}
	}
	key := ev.Key()
	msg.Metadata.Set(jetstream.KeyMetadata, key)
	msg.Metadata.Set(jetstream.SubjectMetadata, Subject(ev))
	delete(msg.Metadata, jetstream.RetryDelayMetadata)
	return msg, key, nil
}

// Subject is the subject suffix of an event on the JetStream bus:
// source.entity.EVENT_TYPE, each a single token.
func Subject(ev *event.Event) string {
	return jetstream.Token(ev.Source) + "." + jetstream.Token(ev.Entity) + "." + jetstream.Token(string(ev.Type))
}

// diff returns the changed, added (old null) and removed (new null) keys.
func diff(before, after map[string]any) map[string]event.Change {
	out := map[string]event.Change{}
	for k, nv := range after {
		ov, ok := before[k]
		if !ok || !reflect.DeepEqual(ov, nv) {
			out[k] = event.Change{Old: ov, New: nv}
		}
	}
	for k, ov := range before {
		if _, ok := after[k]; !ok {
			out[k] = event.Change{Old: ov, New: nil}
		}
	}
	return out
}

// object decodes a JSON object the way event.Decode does (integers that
// fit become int64, other numbers float64), so that the values in data
// and changes compare the same on both sides. A JSON value that is not an
// object is kept under "value". nil in, nil out.
func object(b []byte) (map[string]any, error) {
	if len(b) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	v = normalize(v)
	switch t := v.(type) {
	case nil:
		return nil, nil
	case map[string]any:
		return t, nil
	default:
		return map[string]any{"value": t}, nil
	}
}

func normalize(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			t[k] = normalize(x)
		}
	case []any:
		for i, x := range t {
			t[i] = normalize(x)
		}
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i
		}
		if f, err := t.Float64(); err == nil && !math.IsInf(f, 0) {
			return f
		}
		return t.String()
	}
	return v
}
