package capture

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/event"
)

// A row's message must encode exactly what event.Encode would.
func TestEnvelopeMatchesEventEncode(t *testing.T) {
	src := "db"
	r := &row{
		pos: 9, id: "6f1c1e2a-4a55-4c1b-9f0e-2d7c5b1a0e11", op: "UPDATE", entity: "Order", entityID: "7",
		before:    []byte(`{"id": 7, "amount": 10.50, "tags": ["a"], "gone": true, "same": {"x": 1}}`),
		after:     []byte(`{"id": 7, "amount": 12, "tags": ["a", "b"], "new": null, "same": {"x": 1.0}}`),
		userID:    &src,
		createdAt: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.FixedZone("x", 3600)),
	}
	cfg := Config{Source: "orders_db"}
	cfg.setDefaults()
	msg, err := cfg.toMessage(r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := event.Decode(msg.Payload)
	if err != nil {
		t.Fatalf("%v\n%s", err, msg.Payload)
	}
	want := &event.Event{
		ID: r.id, Type: event.Update, Entity: "Order", EntityID: "7", UserID: "db",
		Data: map[string]any{"id": int64(7), "amount": int64(12), "tags": []any{"a", "b"}, "new": nil, "same": map[string]any{"x": 1.0}},
		Changes: map[string]event.Change{
			"amount": {Old: 10.5, New: int64(12)},
			"tags":   {Old: []any{"a"}, New: []any{"a", "b"}},
			"gone":   {Old: true, New: nil},
			"new":    {Old: nil, New: nil},
		},
		Timestamp: r.createdAt.UTC(), Seq: 9, Source: "orders_db",
	}
	// Through event.Encode and back, for the same normalisation.
	b, err := event.Encode(want)
	if err != nil {
		t.Fatal(err)
	}
	if want, err = event.Decode(b); err != nil {
		t.Fatal(err)
	}
	// Compared as JSON: the images keep PostgreSQL's number text (1.0
	// decodes as a float, where a map re-encoded by event.Encode would
	// give 1, an integer); the values are the same.
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if string(g) != string(w) {
		t.Errorf("envelope decodes to\n%s\nwant\n%s", g, w)
	}
	if msg.Metadata.Get("millrace_key") != want.Key() {
		t.Errorf("key %q, want %q", msg.Metadata.Get("millrace_key"), want.Key())
	}
	if cfg.key(r) != want.Key() {
		t.Errorf("lane key %q, want %q", cfg.key(r), want.Key())
	}
}

func TestNonObjectImages(t *testing.T) {
	cfg := Config{Source: "s"}
	cfg.setDefaults()
	for _, tc := range []struct {
		after string
		want  string
	}{
		{"", "map[]"},
		{"null", "map[]"},
		{"[1,2]", "map[value:[1 2]]"},
		{`"x"`, "map[value:x]"},
	} {
		r := &row{pos: 1, id: "6f1c1e2a-4a55-4c1b-9f0e-2d7c5b1a0e11", op: "INSERT", entity: "E", after: []byte(tc.after)}
		msg, err := cfg.toMessage(r)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := event.Decode(msg.Payload)
		if err != nil {
			t.Fatalf("%q: %v", tc.after, err)
		}
		if fmt.Sprint(ev.Data) != tc.want {
			t.Errorf("after image %q: data %v, want %s", tc.after, ev.Data, tc.want)
		}
	}
}

// BenchmarkToMessage builds the message of an update row with images of
// the bench's size (about 500 bytes of data).
func BenchmarkToMessage(b *testing.B) {
	note := strings.Repeat("x", 400)
	tenant := "t1"
	r := &row{
		pos: 9, id: "6f1c1e2a-4a55-4c1b-9f0e-2d7c5b1a0e11", op: "UPDATE", entity: "Order", entityID: "7",
		before:    []byte(`{"id": 7, "status": "new", "amount": 10.50, "note": "` + note + `"}`),
		after:     []byte(`{"id": 7, "status": "paid", "amount": 10.50, "note": "` + note + `"}`),
		changes:   []byte(`{"status": {"new": "paid", "old": "new"}}`),
		tenantID:  &tenant,
		createdAt: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC),
	}
	cfg := Config{Source: "orders_db"}
	cfg.setDefaults()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cfg.toMessage(r); err != nil {
			b.Fatal(err)
		}
	}
}
