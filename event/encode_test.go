package event_test

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/event"
)

// trickyStrings need escaping, or look as if they did.
var trickyStrings = []string{
	"", "plain", `quote " and \ backslash`, "<script>&amp;</script>", "tab\tnewline\nreturn\r",
	"\b\f\x00\x01\x1f\x7f", "é ü 日本語 🎉", "line\u2028para\u2029end", "bad \xff utf-8 \xc3", "\xe2\x80",
	strings.Repeat("long payload text ", 40),
}

// randValue is a value of data or changes: what Decode and capture
// produce, nested.
func randValue(r *rand.Rand, depth int) any {
	switch n := r.IntN(12); {
	case n == 0:
		return nil
	case n == 1:
		return r.IntN(2) == 0
	case n == 2:
		return r.Int64() - math.MaxInt64/2
	case n == 3:
		return int(r.IntN(1000))
	case n == 4:
		floats := []float64{0, math.Copysign(0, -1), 1.5, -2.25e-7, 1e21, 123456789012345678901234.0, 1e-6, 9.99e-7, 3.14159, math.MaxFloat64, math.SmallestNonzeroFloat64}
		return floats[r.IntN(len(floats))] * float64(1-2*r.IntN(2))
	case n == 5:
		return r.NormFloat64() * math.Pow(10, float64(r.IntN(50)-25))
	case n <= 8 || depth > 2:
		return trickyStrings[r.IntN(len(trickyStrings))]
	case n == 9:
		s := make([]any, r.IntN(4))
		for i := range s {
			s[i] = randValue(r, depth+1)
		}
		return s
	default:
		m := map[string]any{}
		for range r.IntN(5) {
			m[trickyStrings[r.IntN(len(trickyStrings))]] = randValue(r, depth+1)
		}
		return m
	}
}

func randEvent(r *rand.Rand) *event.Event {
	pick := func() string { return trickyStrings[r.IntN(len(trickyStrings))] }
	e := &event.Event{
		ID: pick(), Type: event.Type(pick()), Entity: pick(), EntityID: pick(),
		Timestamp: time.Unix(r.Int64N(1<<33), r.Int64N(1e9)),
	}
	if r.IntN(2) == 0 {
		e.Timestamp = e.Timestamp.UTC()
	} else {
		e.Timestamp = e.Timestamp.In(time.FixedZone("x", (r.IntN(47)-23)*1800))
	}
	if r.IntN(5) > 0 {
		e.Data = map[string]any{}
		for range r.IntN(8) {
			e.Data[pick()] = randValue(r, 0)
		}
	}
	switch r.IntN(3) {
	case 1:
		e.Changes = map[string]event.Change{}
	case 2:
		e.Changes = map[string]event.Change{}
		for range 1 + r.IntN(3) {
			e.Changes[pick()] = event.Change{Old: randValue(r, 0), New: randValue(r, 0)}
		}
	}
	if r.IntN(2) == 0 {
		e.UserID, e.TenantID, e.Source = pick(), pick(), pick()
		e.Seq = r.Int64N(1000) - 10
	}
	return e
}

// Encode writes the bytes json.Marshal writes, for every kind of value
// an event holds.
func TestEncodeAsJSONMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		e := randEvent(r)
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatalf("event %d: json.Marshal: %v", i, err)
		}
		got, err := event.Encode(e)
		if err != nil {
			t.Fatalf("event %d: Encode: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("event %d: Encode =\n%s\njson.Marshal =\n%s", i, got, want)
		}
	}
}

// Values Encode does not write itself go through json.Marshal, errors
// included.
func TestEncodeFallsBack(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	for name, data := range map[string]map[string]any{
		"json.Number": {"n": json.Number("12.50")},
		"float32":     {"f": float32(0.1)},
		"struct":      {"s": struct{ A int }{1}},
		"time":        {"t": ts},
		"uint64":      {"u": uint64(math.MaxUint64)},
		"typed map":   {"m": map[string]string{"b": "<", "a": "x"}},
		"nested":      {"l": []any{map[string]any{"x": []int{1, 2}}}},
	} {
		e := &event.Event{ID: "x", Data: data, Timestamp: ts}
		want, _ := json.Marshal(e)
		got, err := event.Encode(e)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: Encode = %s, %v; want %s", name, got, err, want)
		}
	}
	for name, e := range map[string]*event.Event{
		"NaN":         {Data: map[string]any{"f": math.NaN()}},
		"infinity":    {Changes: map[string]event.Change{"f": {Old: math.Inf(1)}}},
		"year 10000":  {Timestamp: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		"odd offset":  {Timestamp: time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("s", 3601))},
		"unsupported": {Data: map[string]any{"c": make(chan int)}},
	} {
		want, wantErr := json.Marshal(e)
		got, err := event.Encode(e)
		if (err != nil) != (wantErr != nil) || !bytes.Equal(got, want) {
			t.Errorf("%s: Encode = %s, %v; json.Marshal = %s, %v", name, got, err, want, wantErr)
		}
	}
}

func FuzzEncodeAsJSONMarshal(f *testing.F) {
	for _, s := range trickyStrings {
		f.Add(s, 1.5, int64(7))
	}
	f.Fuzz(func(t *testing.T, s string, x float64, n int64) {
		e := &event.Event{ID: s, EntityID: s, Data: map[string]any{s: x, "n": n, "l": []any{s, x}},
			Changes: map[string]event.Change{s: {Old: s, New: x}}, Timestamp: time.Unix(n%(1<<33), 0).UTC()}
		want, wantErr := json.Marshal(e)
		got, err := event.Encode(e)
		if (err != nil) != (wantErr != nil) || !bytes.Equal(got, want) {
			t.Fatalf("Encode = %s, %v; json.Marshal = %s, %v", got, err, want, wantErr)
		}
	})
}

// BenchmarkEncodeRow encodes an event shaped as the suite's rows (id, n,
// a 500-byte text payload), as the webhook action does per delivery.
func BenchmarkEncodeRow(b *testing.B) {
	e := &event.Event{
		ID: "0b7f9e8c-3f5a-4b8e-9d1c-2a6f4e5d7c8b", Type: event.Insert, Entity: "bench_rows", EntityID: "12345",
		Data:      map[string]any{"id": int64(12345), "n": int64(42), "payload": strings.Repeat("x", 500)},
		Timestamp: time.Date(2026, 12, 4, 21, 0, 0, 123456789, time.UTC), Seq: 12345, Source: "bench",
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := event.Encode(e); err != nil {
			b.Fatal(err)
		}
	}
}
