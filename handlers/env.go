package handlers

import (
	"cmp"
	"math"
	"time"

	"github.com/expr-lang/expr/vm/runtime"

	"github.com/millrace/millrace/event"
)

// View returns the event as the map that templates see: its JSON field
// names at the top (id, event_type, entity_type, entity_id, data,
// changes, user_id, tenant_id, timestamp, seq, source). changes maps
// each changed field to {"old": …, "new": …} and is nil when the
// producer did not track changes; timestamp is RFC 3339 text, empty
// when the event has none. Conditions see the same names (see
// docs/conditions.md), with timestamp as a time.
func View(ev *event.Event) map[string]any {
	m := make(map[string]any, viewSize)
	fillView(m, ev, true, true)
	return m
}

const viewSize = 11

// fillView writes the view of ev into m. A template that never reads
// changes or timestamp skips their conversion, the costly parts of the
// view. changes is a nil map, never a nil interface, so that
// text/template reads .changes.status as absent rather than failing.
func fillView(m map[string]any, ev *event.Event, withChanges, withTimestamp bool) {
	var changes map[string]any
	if withChanges && ev.Changes != nil {
		changes = changesView(ev.Changes)
	}
	ts := ""
	if withTimestamp && !ev.Timestamp.IsZero() {
		ts = ev.Timestamp.Format(time.RFC3339Nano)
	}
	m["id"] = ev.ID
	m["event_type"] = string(ev.Type)
	m["entity_type"] = ev.Entity
	m["entity_id"] = ev.EntityID
	m["data"] = ev.Data
	m["changes"] = changes
	m["user_id"] = ev.UserID
	m["tenant_id"] = ev.TenantID
	m["timestamp"] = ts
	m["seq"] = ev.Seq
	m["source"] = ev.Source
}

func changesView(cs map[string]event.Change) map[string]any {
	out := make(map[string]any, len(cs))
	for k, c := range cs {
		out[k] = map[string]any{"old": c.Old, "new": c.New}
	}
	return out
}

// Equal reports whether two event values are equal by value: numbers
// of any Go type compare as numbers (int64(100) equals 100.0), objects
// and lists compare element by element with the same rule, nil equals
// only nil. Conditions use it for == on objects and lists and in
// field_changed_to and field_changed_from.
func Equal(a, b any) bool {
	if c, ok := a.(event.Change); ok {
		a = map[string]any{"old": c.Old, "new": c.New}
	}
	if c, ok := b.(event.Change); ok {
		b = map[string]any{"old": c.Old, "new": c.New}
	}
	switch x := a.(type) {
	case nil:
		return b == nil || runtime.IsNil(b)
	case string:
		y, ok := b.(string)
		return ok && x == y
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !Equal(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok {
			return runtime.Equal(a, b)
		}
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if !Equal(x[i], y[i]) {
				return false
			}
		}
		return true
	}
	if b == nil {
		return runtime.IsNil(a)
	}
	if xn, ok := toNumber(a); ok {
		yn, ok := toNumber(b)
		return ok && xn.equal(yn)
	}
	return runtime.Equal(a, b)
}

// number is an integer (exact) or a float.
type number struct {
	i     int64
	f     float64
	float bool
}

func (x number) equal(y number) bool {
	switch {
	case !x.float && !y.float:
		return x.i == y.i
	case x.float && y.float:
		return x.f == y.f
	case x.float:
		return intEqualsFloat(y.i, x.f)
	default:
		return intEqualsFloat(x.i, y.f)
	}
}

func (x number) compare(y number) int {
	switch {
	case !x.float && !y.float:
		return cmp.Compare(x.i, y.i)
	case x.float && y.float:
		return cmp.Compare(x.f, y.f)
	case x.float:
		return -compareIntFloat(y.i, x.f)
	default:
		return compareIntFloat(x.i, y.f)
	}
}

// compareIntFloat orders i and f without rounding i to a float.
func compareIntFloat(i int64, f float64) int {
	switch {
	case math.IsNaN(f):
		return -1
	case f >= 1<<63:
		return -1
	case f < -(1 << 63):
		return 1
	}
	t := math.Trunc(f)
	if c := cmp.Compare(i, int64(t)); c != 0 || t == f {
		return c
	}
	if f > t { // i == trunc(f) < f
		return -1
	}
	return 1
}

// intEqualsFloat compares exactly, without rounding i to a float:
// 2^53+1 is not 2^53.
func intEqualsFloat(i int64, f float64) bool {
	if f != math.Trunc(f) || f < -(1<<63) || f >= 1<<63 {
		return false
	}
	return int64(f) == i
}

// Integer returns v as an int64 when it is an integer of any Go type
// (not a float, even a whole one): a list index in a condition.
func Integer(v any) (int64, bool) {
	n, ok := toNumber(v)
	if !ok || n.float {
		return 0, false
	}
	return n.i, true
}

func toNumber(v any) (number, bool) {
	switch x := v.(type) {
	case int64:
		return number{i: x}, true
	case float64:
		return number{f: x, float: true}, true
	case int:
		return number{i: int64(x)}, true
	case int32:
		return number{i: int64(x)}, true
	case int16:
		return number{i: int64(x)}, true
	case int8:
		return number{i: int64(x)}, true
	case uint8:
		return number{i: int64(x)}, true
	case uint16:
		return number{i: int64(x)}, true
	case uint32:
		return number{i: int64(x)}, true
	case uint:
		return unsigned(uint64(x)), true
	case uint64:
		return unsigned(x), true
	case float32:
		return number{f: float64(x), float: true}, true
	}
	return number{}, false
}

func unsigned(u uint64) number {
	if u > math.MaxInt64 {
		return number{f: float64(u), float: true}
	}
	return number{i: int64(u)}
}
