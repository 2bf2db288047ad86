package e2e_test

import (
	"strconv"
	"testing"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/internal/e2e"
)

func delivery(id string, typ event.Type, entity, n int, key string, status int) *e2e.Delivery {
	return &e2e.Delivery{Path: "p", Key: key, Status: status, Event: &event.Event{
		ID: id, Type: typ, Entity: "Order", EntityID: strconv.Itoa(entity),
		Data: map[string]any{"id": int64(entity), "n": int64(n)},
	}}
}

// TestCount checks that the tally the suites rely on sees each kind of
// failure it must report.
func TestCount(t *testing.T) {
	produced := []e2e.Change{
		{Op: event.Insert, EntityID: 1}, {Op: event.Update, EntityID: 1, N: 1},
		{Op: event.Insert, EntityID: 2}, {Op: event.Delete, EntityID: 2},
	}
	reqs := []*e2e.Delivery{
		delivery("a", event.Insert, 1, 0, "ka", 204),
		delivery("a", event.Insert, 1, 0, "ka", 204),       // duplicate, same key
		delivery("b", event.Update, 1, 1, "kb", 503),       // failed attempt
		delivery("b", event.Update, 1, 1, "kb-other", 204), // another key
		delivery("c", event.Insert, 2, 0, "kc", 204),
		delivery("c2", event.Insert, 2, 0, "kc2", 204), // another event id for one change
		delivery("x", event.Insert, 9, 0, "kx", 204),   // no such change
		{Path: "p", Key: "k", Status: 204},             // not an event
	}
	tl := e2e.Count(produced, reqs)
	if tl.Changes != 4 || tl.Delivered != 3 {
		t.Errorf("changes %d, delivered %d; want 4, 3", tl.Changes, tl.Delivered)
	}
	if len(tl.Lost) != 1 || tl.Lost[0] != "DELETE/2/0" {
		t.Errorf("lost %v, want [DELETE/2/0]", tl.Lost)
	}
	if tl.Duplicates != 1 {
		t.Errorf("duplicates %d, want 1", tl.Duplicates)
	}
	if len(tl.KeyConflicts) != 1 || len(tl.IDConflicts) != 1 || len(tl.Unexpected) != 2 {
		t.Errorf("key conflicts %v, id conflicts %v, unexpected %v; want 1, 1, 2", tl.KeyConflicts, tl.IDConflicts, tl.Unexpected)
	}
	if tl.Problems() == "" {
		t.Error("Problems() is empty for a tally with a loss")
	}
	clean := e2e.Count(produced[:1], reqs[:2])
	if p := clean.Problems(); p != "" || clean.Duplicates != 1 {
		t.Errorf("a delivered change with a duplicate under one key: problems %q, duplicates %d; want none, 1", p, clean.Duplicates)
	}
}
