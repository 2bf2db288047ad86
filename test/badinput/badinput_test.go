package badinput_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/internal/e2e"
)

func TestMain(m *testing.M) { e2e.Main(m) }

const wait = time.Minute

func observeAll(recv *e2e.Receiver) map[string]e2e.Observer {
	return map[string]e2e.Observer{"all": {Actions: []map[string]any{recv.Action("all", nil)}}}
}

// envelope returns a valid event's JSON with fields replaced (a nil
// value removes the field).
func envelope(id string, fields map[string]any) []byte {
	m := map[string]any{
		"id": id, "event_type": "INSERT", "entity_type": "Order", "entity_id": "1",
		"data": map[string]any{"id": 1, "status": "new", "n": 0}, "timestamp": time.Now().UTC().Format(time.RFC3339Nano),
	}
	for k, v := range fields {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	b, _ := json.Marshal(m)
	return b
}

// badRequest is one body POST /v1/events must refuse.
type badRequest struct {
	name   string
	body   []byte
	status int
	// reason is a part of the refusal's error or of a rejection reason.
	reason string
}

func badRequests() []badRequest {
	goodID := uuid.NewString()
	return []badRequest{
		{"malformed JSON", []byte(`{"id": "` + uuid.NewString() + `", "event_type": `), 400, "malformed JSON"},
		{"not an object", []byte(`"INSERT Order 1"`), 400, "JSON object"},
		{"empty body", nil, 400, "JSON object"},
		{"empty batch", []byte(`[]`), 400, "empty batch"},
		{"oversized", bytes.Repeat([]byte("x"), 2<<20), 413, "max_body_bytes"},
		{"oversized field", envelope(uuid.NewString(), map[string]any{"entity_type": strings.Repeat("E", 2000)}), 400, "entity_type"},
		{"wrong-typed entity_id", envelope(uuid.NewString(), map[string]any{"entity_id": map[string]any{"a": 1}}), 400, "entity_id"},
		{"wrong-typed data", envelope(uuid.NewString(), map[string]any{"data": []any{1, 2}}), 400, "data"},
		{"wrong-typed seq", envelope(uuid.NewString(), map[string]any{"seq": "first"}), 400, "seq"},
		{"unknown type", envelope(uuid.NewString(), map[string]any{"event_type": "UPSERT"}), 400, "unknown type"},
		{"missing id", envelope("", map[string]any{"id": nil}), 400, "id"},
		{"id not a UUID", envelope("order-1", nil), 400, "UUID"},
		{"changes on INSERT", envelope(uuid.NewString(), map[string]any{"changes": map[string]any{"n": map[string]any{"old": 0, "new": 1}}}), 400, "changes"},
		// A batch is taken whole or not at all: its good event is not
		// published either.
		{"batch with one bad event", []byte("[" + string(envelope(goodID, nil)) + "," +
			string(envelope(uuid.NewString(), map[string]any{"event_type": "MERGE"})) + "]"), 400, "unknown type"},
	}
}

// TestIngest sends malformed, oversized, wrong-typed and unknown-type
// events to POST /v1/events on every topology: each is refused with a
// 4xx and a reason, nothing of them is delivered, and a valid event
// afterwards is.
func TestIngest(t *testing.T) {
	for _, topology := range e2e.Topologies() {
		t.Run(topology, func(t *testing.T) {
			t.Parallel()
			recv := e2e.NewReceiver(t)
			r := e2e.NewRig(t, topology, e2e.Options{Receiver: recv, Observers: observeAll(recv)})
			r.Start()
			ctx, cancel := context.WithTimeout(context.Background(), 2*wait)
			defer cancel()
			cases := badRequests()
			for _, c := range cases {
				status, body, err := r.Post(ctx, "/v1/events", c.body)
				if err != nil {
					t.Fatalf("%s: %v", c.name, err)
				}
				var answer struct {
					Accepted int    `json:"accepted"`
					Error    string `json:"error"`
					Rejected []struct {
						Reason string `json:"reason"`
					} `json:"rejected"`
				}
				_ = json.Unmarshal([]byte(body), &answer)
				reasons := answer.Error
				for _, rj := range answer.Rejected {
					reasons += " | " + rj.Reason
				}
				if status != c.status || answer.Accepted != 0 || !strings.Contains(reasons, c.reason) {
					t.Errorf("%s: %d %s; want %d, nothing accepted, a reason about %q", c.name, status, clip(body), c.status, c.reason)
				}
			}
			// The router keeps running: a valid event after them all is
			// delivered, and it is the only delivery.
			good := &event.Event{ID: uuid.NewString(), Type: event.Insert, Entity: "Order", EntityID: "42",
				Data: map[string]any{"id": 42, "status": "new", "n": 0}, Timestamp: time.Now().UTC()}
			if err := r.IngestRetry(ctx, good); err != nil {
				t.Fatal(err)
			}
			recv.Wait(t, wait, "the valid event", func() bool { return recv.Count("all") >= 1 })
			time.Sleep(500 * time.Millisecond)
			got := recv.Requests("all")
			if len(got) != 1 || got[0].Event == nil || got[0].Event.ID != good.ID {
				t.Errorf("deliveries after the bad requests: %d, want only the valid event", len(got))
			}
			if !r.Proc.Running() {
				t.Error("millrace is not running any more")
			}
			t.Logf("%s: %d bad requests refused with a 4xx and a reason; a valid event afterwards delivered", r.Describe(), len(cases))
		})
	}
}

// busCase is one bad message written straight onto a bus.
type busCase struct {
	name string
	send func(t *testing.T, r *e2e.Rig)
	// refused: the bus itself refuses it (no dead letter expected).
	refused bool
	// payload, when set, is what the dead letter must keep.
	payload []byte
}

func raw(name string, payload []byte) busCase {
	return busCase{name: name, payload: payload, send: func(t *testing.T, r *e2e.Rig) { r.PublishRaw(t, "", "", payload) }}
}

func busCases(bus e2e.Bus) []busCase {
	switch bus {
	case e2e.BusEmbedded, e2e.BusJetStream, e2e.BusRedis:
		cases := []busCase{
			raw("malformed JSON", []byte(`{"id": "`+uuid.NewString()+`", "event_type": `)),
			raw("not JSON", []byte("\x00\x01binary\xff")),
			raw("empty", []byte{}),
			raw("oversized", bytes.Repeat([]byte("z"), 512<<10)),
			raw("oversized field", envelope(uuid.NewString(), map[string]any{"entity_type": strings.Repeat("E", 2000)})),
			raw("wrong-typed entity_id", envelope(uuid.NewString(), map[string]any{"entity_id": map[string]any{"a": 1}})),
			raw("wrong-typed data", envelope(uuid.NewString(), map[string]any{"data": "a string"})),
			raw("unknown type", envelope(uuid.NewString(), map[string]any{"event_type": "UPSERT"})),
		}
		if bus == e2e.BusRedis {
			cases = append(cases,
				raw("oversized 2 MiB", bytes.Repeat([]byte("y"), 2<<20)),
				busCase{name: "entry without payload", send: func(t *testing.T, r *e2e.Rig) {
					r.RedisEntry(t, "uuid", uuid.NewString(), "note", "no payload field")
				}},
				busCase{name: "entry without uuid", send: func(t *testing.T, r *e2e.Rig) {
					r.RedisEntry(t, "payload", string(envelope(uuid.NewString(), nil)))
				}},
			)
		}
		return cases
	case e2e.BusChangeLog:
		row := func(name string, refused bool, cols map[string]any) busCase {
			return busCase{name: name, refused: refused, send: func(t *testing.T, r *e2e.Rig) {
				err := r.InsertChangeLog(context.Background(), cols)
				if refused && err == nil {
					t.Errorf("%s: the change log took the row", name)
				}
				if !refused && err != nil {
					t.Fatalf("%s: %v", name, err)
				}
			}}
		}
		return []busCase{
			// A non-object image is no error there: the capture wraps it
			// as {"value": ...} (bus/capture).
			row("changes on an INSERT", false, map[string]any{"op": "INSERT", "entity_type": "Order", "entity_id": "1",
				"after_image": `{"id": 1}`, "changes": `{"n": {"old": 0, "new": 1}}`}),
			row("wrong-typed changes", false, map[string]any{"op": "UPDATE", "entity_type": "Order", "entity_id": "1",
				"after_image": `{"id": 1}`, "changes": `[1, 2]`}),
			row("empty entity type", false, map[string]any{"op": "INSERT", "entity_type": "", "entity_id": "1", "after_image": `{"id": 1}`}),
			row("oversized field", false, map[string]any{"op": "INSERT", "entity_type": strings.Repeat("E", 2000), "entity_id": "1", "after_image": `{"id": 1}`}),
			row("unknown type", true, map[string]any{"op": "UPSERT", "entity_type": "Order", "entity_id": "1", "after_image": `{"id": 1}`}),
		}
	}
	return nil
}

// TestBus writes malformed, oversized, wrong-typed and unknown-type
// messages straight onto each topology's bus (JetStream subject, Redis
// stream, change log): each ends in the dead-letter store with a reason,
// shown by the admin API, and a valid change afterwards is delivered.
func TestBus(t *testing.T) {
	for _, topology := range e2e.Topologies() {
		t.Run(topology, func(t *testing.T) {
			t.Parallel()
			recv := e2e.NewReceiver(t)
			r := e2e.NewRig(t, topology, e2e.Options{Receiver: recv, Observers: observeAll(recv)})
			r.Start()
			cases := busCases(r.Bus)
			want := 0
			for _, c := range cases {
				c.send(t, r)
				if !c.refused {
					want++
				}
			}
			dls := r.WaitDeadLetters(t, wait, fmt.Sprintf("%d dead letters", want), func(d []e2e.DeadLetter) bool { return len(d) >= want })
			if len(dls) != want {
				t.Errorf("%d dead letters, want %d", len(dls), want)
			}
			payloads := map[string]bool{}
			for _, d := range dls {
				if d.Reason != "undecodable" || d.Error == "" || d.Observer != "" {
					t.Errorf("dead letter %s: reason %q, error %q, observer %q; want undecodable with an error, no observer",
						d.ID, d.Reason, d.Error, d.Observer)
				}
				full := r.DeadLetter(t, d.ID)
				payloads[string(full.Payload)] = true
			}
			for _, c := range cases {
				if c.payload != nil && !payloads[string(c.payload)] {
					t.Errorf("%s: no dead letter keeps its %d bytes", c.name, len(c.payload))
				}
			}
			// The router keeps running: a valid change is delivered.
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			if err := r.Insert(ctx, []int{7}, "new"); err != nil {
				t.Fatal(err)
			}
			recv.Wait(t, wait, "the valid change", func() bool { return recv.Count("all") >= 1 })
			if tl := e2e.Count(r.Produced(), recv.Requests("all")); tl.Problems() != "" {
				t.Errorf("%s", tl.Problems())
			}
			if !r.Proc.Running() {
				t.Error("millrace is not running any more")
			}
			t.Logf("%s: %d bad messages on the %s: %d dead-lettered as undecodable with their reason, %d refused by the bus; a valid change afterwards delivered",
				r.Describe(), len(cases), r.Bus, want, len(cases)-want)
		})
	}
}

func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}
