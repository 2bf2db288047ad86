package event_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/event"
)

const good = `{
  "id": "0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01",
  "event_type": "UPDATE",
  "entity_type": "Order",
  "entity_id": 1001,
  "data": {"id": 1001, "total": 100.00, "big": 9007199254740993, "ratio": 0.5, "tags": ["a", 2], "nested": {"n": 3}},
  "changes": {"status": {"old": "new", "new": "shipped"}},
  "user_id": "7",
  "tenant_id": "acme",
  "timestamp": "2026-11-27T10:00:00.123Z",
  "seq": 42,
  "source": "orders_db"
}`

func TestDecode(t *testing.T) {
	ev, err := event.Decode([]byte(good))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if ev.ID != "0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01" || ev.Type != event.Update || ev.Entity != "Order" {
		t.Errorf("header fields = %+v", ev)
	}
	if ev.EntityID != "1001" {
		t.Errorf("entity_id = %q; want a number kept as its string", ev.EntityID)
	}
	if v, ok := ev.Data["id"].(int64); !ok || v != 1001 {
		t.Errorf("data.id = %#v; want int64 1001", ev.Data["id"])
	}
	if v, ok := ev.Data["total"].(float64); !ok || v != 100 {
		t.Errorf("data.total = %#v; want float64 100", ev.Data["total"])
	}
	if v := ev.Data["big"]; v != int64(9007199254740993) {
		t.Errorf("data.big = %#v; precision lost", v)
	}
	if v := ev.Data["nested"].(map[string]any)["n"]; v != int64(3) {
		t.Errorf("nested number = %#v", v)
	}
	if v := ev.Data["tags"].([]any)[1]; v != int64(2) {
		t.Errorf("number in list = %#v", v)
	}
	if c := ev.Changes["status"]; c.Old != "new" || c.New != "shipped" {
		t.Errorf("changes = %+v", ev.Changes)
	}
	if want := time.Date(2026, 11, 27, 10, 0, 0, 123e6, time.UTC); !ev.Timestamp.Equal(want) {
		t.Errorf("timestamp = %s", ev.Timestamp)
	}
	if ev.Seq != 42 || ev.Source != "orders_db" || ev.UserID != "7" || ev.TenantID != "acme" {
		t.Errorf("envelope = %+v", ev)
	}
}

func TestRoundTrip(t *testing.T) {
	ev, err := event.Decode([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	b, err := event.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	back, err := event.Decode(b)
	if err != nil {
		t.Fatalf("re-decode: %v\n%s", err, b)
	}
	b2, _ := event.Encode(back)
	if string(b) != string(b2) {
		t.Errorf("round trip changed the event:\n%s\n%s", b, b2)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "event_type", "entity_type", "entity_id", "data", "changes", "user_id", "tenant_id", "timestamp", "seq", "source"} {
		if _, ok := m[k]; !ok {
			t.Errorf("encoded envelope lacks %q", k)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	base := `"id":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01","event_type":"INSERT","entity_type":"Order","entity_id":"1"`
	tests := []struct {
		name, body, field, want string
	}{
		{"not json", `hello`, "", "JSON object"},
		{"truncated", `{"id":`, "", "malformed JSON"},
		{"trailing data", `{` + base + `} {}`, "", "after top-level value"},
		{"bad JSON in data", `{` + base + `,"data":{"a":}}`, "", "malformed JSON"},
		{"array body", `[1,2]`, "", "JSON object"},
		{"missing id", `{"event_type":"INSERT","entity_type":"Order","data":{}}`, "id", "is required"},
		{"bad id", `{` + strings.Replace(base, "0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01", "42", 1) + `}`, "id", "must be a UUID"},
		{"missing type", `{"id":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01","entity_type":"Order"}`, "event_type", "is required"},
		{"unknown type", `{` + strings.Replace(base, "INSERT", "UPSERT", 1) + `}`, "event_type", `unknown type "UPSERT"`},
		{"missing entity", `{"id":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01","event_type":"INSERT"}`, "entity_type", "is required"},
		{"data array", `{` + base + `,"data":[1]}`, "data", "must be a JSON object, got an array"},
		{"data string", `{` + base + `,"data":"x"}`, "data", "got a string"},
		{"changes on insert", `{` + base + `,"changes":{"a":{"old":1,"new":2}}}`, "changes", "only allowed on UPDATE"},
		{"change not object", `{` + strings.Replace(base, "INSERT", "UPDATE", 1) + `,"changes":{"a":1}}`, "changes.a", "must be an object"},
		{"entity_id object", `{` + strings.Replace(base, `"entity_id":"1"`, `"entity_id":{}`, 1) + `}`, "entity_id", "string or a number"},
		{"bad timestamp", `{` + base + `,"timestamp":"yesterday"}`, "timestamp", "RFC 3339"},
		{"bad seq", `{` + base + `,"seq":"x"}`, "seq", "must be an integer"},
		{"negative seq", `{` + base + `,"seq":-1}`, "seq", "must not be negative"},
		{"id wrong type", `{"id":5,"event_type":"INSERT","entity_type":"Order"}`, "", "must be string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := event.Decode([]byte(tt.body))
			if err == nil {
				t.Fatalf("Decode(%s) succeeded", tt.body)
			}
			if !errors.Is(err, event.ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
			if tt.field != "" {
				var fe *event.FieldError
				if !errors.As(err, &fe) || fe.Field != tt.field && !strings.Contains(err.Error(), tt.field+": ") {
					t.Errorf("error %q does not name field %s", err, tt.field)
				}
			}
		})
	}
}

func TestDecodeReportsEveryProblem(t *testing.T) {
	_, err := event.Decode([]byte(`{"event_type":"NOPE","data":[]}`))
	for _, want := range []string{"id: is required", "event_type: unknown type", "entity_type: is required", "data: must be a JSON object"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}

func TestDecodeMany(t *testing.T) {
	evs, errs, err := event.DecodeMany([]byte(`[` + good + `, {"id": "x"}]`))
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0] == nil || errs[0] != nil || errs[1] == nil {
		t.Fatalf("DecodeMany = %v, %v", evs, errs)
	}
	if _, _, err := event.DecodeMany([]byte(`[1,`)); err == nil {
		t.Error("a malformed array must fail as a whole")
	}
	evs, errs, err = event.DecodeMany([]byte(good))
	if err != nil || len(evs) != 1 || errs[0] != nil {
		t.Errorf("single object: %v %v %v", evs, errs, err)
	}
}

func TestKey(t *testing.T) {
	a := &event.Event{Source: "db1", Entity: "Order", EntityID: "1"}
	b := &event.Event{Source: "db2", Entity: "Order", EntityID: "1"}
	c := &event.Event{Source: "db1", Entity: "Order1", EntityID: ""}
	if a.Key() == b.Key() || a.Key() == c.Key() {
		t.Errorf("keys collide: %q %q %q", a.Key(), b.Key(), c.Key())
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"id":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01","event_type":"DELETE","entity_type":"A","data":{"x":1e400}}`))
	f.Add([]byte(`[{"id":null}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := event.Decode(b)
		if err != nil {
			if !errors.Is(err, event.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		out, err := event.Encode(ev)
		if err != nil {
			t.Fatalf("Encode of a decoded event: %v", err)
		}
		if _, err := event.Decode(out); err != nil {
			t.Fatalf("re-decode of %s: %v", out, err)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	body := []byte(good)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := event.Decode(body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeRow decodes the envelope of a captured INSERT shaped as
// the benchmark suite's events: a row of id, n and about 450 bytes of
// text.
func BenchmarkDecodeRow(b *testing.B) {
	ev := &event.Event{ID: "3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b", Type: event.Insert, Entity: "BenchRow", EntityID: "12345",
		Data:      map[string]any{"id": int64(12345), "n": int64(12345), "payload": strings.Repeat("millrace turns database changes into actions. ", 10)},
		Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC), Seq: 12346, Source: "bench"}
	body, err := event.Encode(ev)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := event.Decode(body); err != nil {
			b.Fatal(err)
		}
	}
}
