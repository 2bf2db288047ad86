package samples

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/millrace/millrace/event"
)

// OrderUpdate is an UPDATE of an order with every envelope field set,
// data of every JSON kind (nested objects, lists, null, a dotted key, an
// integer beyond float64's precision) and tracked changes, one of them
// a change in value only (1 to 1.0).
const OrderUpdate = `{
	"id": "7d3f1b2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
	"event_type": "UPDATE",
	"entity_type": "Order",
	"entity_id": "42",
	"user_id": "u-7",
	"tenant_id": "acme",
	"source": "orders_db",
	"seq": 981,
	"timestamp": "2024-05-06T07:08:09Z",
	"data": {
		"status": "shipped",
		"total": 100,
		"price": 100.5,
		"big": 9007199254740993,
		"flag": true,
		"note": null,
		"tags": ["a", "b"],
		"dims": {"w": 2, "h": 3.5},
		"customer": {"name": "Zoë", "address": {"city": "Paris"}},
		"first.last": "dotted key"
	},
	"changes": {
		"status": {"old": "paid", "new": "shipped"},
		"total": {"old": 90.0, "new": 100},
		"same": {"old": 1, "new": 1.0},
		"customer": {"old": {"email": "a@x"}, "new": {"email": "b@x"}}
	}
}`

// Event decodes a JSON envelope the way the bus does, so numbers arrive
// as int64 or float64.
func Event(t testing.TB, js string) *event.Event {
	t.Helper()
	ev, err := event.Decode([]byte(js))
	if err != nil {
		t.Fatalf("event.Decode: %v", err)
	}
	return ev
}

// DocExamples reads the sample event and the example table (source,
// expected result) that follow the markers in a page of docs/, so that
// the tests of what the page describes keep it true.
func DocExamples(t *testing.T, page string) (*event.Event, [][2]string) {
	t.Helper()
	b, err := os.ReadFile(DocPath(t, page))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	_, sample, ok := strings.Cut(doc, "<!-- sample-event -->\n```json\n")
	if !ok {
		t.Fatalf("%s: no sample event", page)
	}
	sample, _, _ = strings.Cut(sample, "```")
	ev := Event(t, sample)
	_, table, ok := strings.Cut(doc, "<!-- examples -->\n")
	if !ok {
		t.Fatalf("%s: no examples", page)
	}
	var rows [][2]string
	for i, line := range strings.Split(table, "\n") {
		if !strings.HasPrefix(line, "|") {
			break
		}
		if i < 2 { // header and rule
			continue
		}
		// "\|" is a pipe inside a cell.
		line = strings.ReplaceAll(strings.Trim(line, "|"), `\|`, "\x00")
		var clean []string
		for _, c := range strings.Split(line, "|") {
			clean = append(clean, strings.ReplaceAll(strings.Trim(strings.TrimSpace(c), "`"), "\x00", "|"))
		}
		if len(clean) != 2 {
			t.Fatalf("%s: bad example row %q", page, line)
		}
		rows = append(rows, [2]string{clean[0], clean[1]})
	}
	if len(rows) == 0 {
		t.Fatalf("%s: empty example table", page)
	}
	return ev, rows
}

// DocPath returns the path of a page of docs/, found from the test's
// directory up to the module root.
func DocPath(t testing.TB, page string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "docs", page)
		}
		up := filepath.Dir(dir)
		if up == dir {
			t.Fatalf("docs/%s: no go.mod above the test's directory", page)
		}
		dir = up
	}
}
