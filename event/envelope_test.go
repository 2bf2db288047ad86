package event_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/millrace/millrace/event"
)

// The envelope has Event's fields under the same JSON names, so that
// what a capture encodes decodes as the event it stands for.
func TestEnvelopeMatchesEvent(t *testing.T) {
	tags := func(v any) map[string]string {
		out := map[string]string{}
		rt := reflect.TypeOf(v)
		for i := range rt.NumField() {
			out[rt.Field(i).Name] = rt.Field(i).Tag.Get("json")
		}
		return out
	}
	if got, want := tags(event.Envelope{}), tags(event.Event{}); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("envelope fields %v\nevent.Event fields %v", got, want)
	}
}

// AppendJSON writes what encoding/json writes for the envelope (data and
// changes compact, as encoding/json leaves them), whatever the strings
// hold and whichever fields are empty.
func TestEnvelopeAppendJSON(t *testing.T) {
	strs := []string{"", "plain", `qu"ote`, `back\slash`, "new\nline", "tab\t", "<b>&amp;</b>", "ünï©ødé", "bad \xff utf8", "\u2028sep", "nul\x00"}
	for i, s := range strs {
		e := &event.Envelope{
			ID: s, Type: event.Type(s), Entity: s, EntityID: s, UserID: s, TenantID: s, Source: s,
			Data:      json.RawMessage(`{"a":1,"s":"x"}`),
			Timestamp: time.Date(2026, 1, 2, 3, 4, 5, i*1000, time.UTC),
			Seq:       int64(i),
		}
		if i%2 == 0 {
			e.Changes = json.RawMessage(`{"a":{"old":0,"new":1}}`)
		}
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if got := e.AppendJSON(nil); string(got) != string(want) {
			t.Errorf("string %q:\n got %s\nwant %s", s, got, want)
		}
	}
}

// IsNumber accepts exactly JSON's number grammar.
func TestIsNumber(t *testing.T) {
	for s, want := range map[string]bool{
		"0": true, "-0": true, "12": true, "10.50": true, "-3.25": true, "1e+20": true, "2E-3": true, "1e5": true,
		"": false, "-": false, "01": false, "1.": false, ".5": false, "1e": false, "1e+": false, "NaN": false,
		"Infinity": false, "-Infinity": false, "1 ": false, "+1": false, "0x10": false,
	} {
		if got := event.IsNumber([]byte(s)); got != want {
			t.Errorf("IsNumber(%q) = %v, want %v", s, got, want)
		}
	}
}
