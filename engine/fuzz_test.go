package engine_test

import (
	"strings"
	"testing"

	"github.com/millrace/millrace/engine"
	"github.com/millrace/millrace/event"
)

// fuzzEvents are the events every fuzzed condition is evaluated on.
var fuzzEvents = []string{
	orderUpdateFuzz,
	`{"id":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01","event_type":"INSERT","entity_type":"Order","entity_id":"1","data":{"status":"new","total":10}}`,
	`{"id":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a02","event_type":"UPDATE","entity_type":"Order","entity_id":"1","data":{}}`,
	`{"id":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a03","event_type":"DELETE","entity_type":"User","entity_id":"9","data":{"email":null}}`,
	`{"id":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a04","event_type":"CUSTOM","entity_type":"Job","data":{"a":[1,{"b":[2.5,"c"]}]}}`,
}

const orderUpdateFuzz = `{"id":"7d3f1b2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b","event_type":"UPDATE","entity_type":"Order","entity_id":"42",
"user_id":"u-7","tenant_id":"acme","source":"orders_db","seq":981,"timestamp":"2024-05-06T07:08:09Z",
"data":{"status":"shipped","total":100,"price":100.5,"big":9007199254740993,"flag":true,"note":null,"tags":["a","b"],
"dims":{"w":2,"h":3.5},"customer":{"name":"Zoë","address":{"city":"Paris"}},"first.last":"dotted key"},
"changes":{"status":{"old":"paid","new":"shipped"},"total":{"old":90.0,"new":100},"same":{"old":1,"new":1.0}}}`

// FuzzCondition compiles arbitrary conditions and evaluates those that
// compile on sample events and on an arbitrary one. Neither step may
// panic, and every error is one line (the observer's log and dead
// letters carry it as is).
func FuzzCondition(f *testing.F) {
	for _, s := range []string{
		"data.status == 'shipped' && field_changed('status')",
		"field_changed_to('status', 'shipped') && field_changed_from('status', 'paid')",
		"changes.total.new - changes.total.old >= 10",
		"data.total == 100.00 and tenant_id == 'acme'",
		"entity_type == 'Order' && data.customer.address.city == 'Paris'",
		"has_field('coupon') && data.coupon == nil",
		"'express' in data.tags || data.status in ['shipped', 'delivered']",
		"data.email endsWith '@example.com' || data.customer.name matches '^Z'",
		"!data.archived && (data.discount ?? 0) > 10",
		"timestamp > date('2024-01-01T00:00:00Z') && now() - timestamp > duration('1h')",
		"data.discount > 10",
		"len(data.tags) > 1 && all(data.tags, {# != ''})",
		"data['first.last'] == 'dotted key'",
		"seq % 2 == 0 ? data.total : data.price",
		"1 / 0 > 1",
		"data.status > 3",
		"field_changed(data)",
		"has_field(1, 2)",
		"let x = data.total; x * 2 > 100",
		"",
		"(((((",
	} {
		f.Add(s, []byte(fuzzEvents[0]))
	}
	samples := make([]*event.Event, 0, len(fuzzEvents))
	for _, js := range fuzzEvents {
		ev, err := event.Decode([]byte(js))
		if err != nil {
			f.Fatalf("sample event: %v", err)
		}
		samples = append(samples, ev)
	}
	oneLine := func(t *testing.T, what string, err error) {
		if err != nil && strings.ContainsAny(err.Error(), "\n\r") {
			t.Fatalf("%s: the error is not one line: %q", what, err)
		}
	}
	f.Fuzz(func(t *testing.T, src string, evJSON []byte) {
		c, err := engine.CompileCondition(src)
		oneLine(t, "compile", err)
		if err != nil {
			if c != nil {
				t.Fatal("CompileCondition returned a condition and an error")
			}
			return
		}
		evs := samples
		if ev, err := event.Decode(evJSON); err == nil {
			evs = append(evs[:len(evs):len(evs)], ev)
		}
		for _, ev := range evs {
			_, err := c.Eval(ev)
			oneLine(t, "eval", err)
		}
	})
}
