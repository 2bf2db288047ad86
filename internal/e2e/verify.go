package e2e

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Tally compares the changes a test made with the requests a path got.
type Tally struct {
	// Changes is the number of changes made; Delivered how many of them
	// were accepted at least once.
	Changes, Delivered int
	// Lost lists the changes never accepted (ChangeKey form), sorted.
	Lost []string
	// Duplicates counts accepted deliveries beyond the first of each
	// event.
	Duplicates int
	// KeyConflicts lists events whose requests did not all carry the
	// same idempotency key; IDConflicts changes that arrived under more
	// than one event id; Unexpected requests that match no change.
	KeyConflicts, IDConflicts, Unexpected []string
}

// Count tallies the requests reqs (of one path) against the changes
// produced.
func Count(produced []Change, reqs []*Delivery) Tally {
	t := Tally{Changes: len(produced)}
	want := make(map[string]bool, len(produced))
	for _, c := range produced {
		want[c.Key()] = true
	}
	accepted := map[string]int{}         // event id → accepted deliveries
	keys := map[string]map[string]bool{} // event id → idempotency keys
	ids := map[string]map[string]bool{}  // change → event ids
	delivered := map[string]bool{}       // change → accepted once
	for _, d := range reqs {
		ck := DeliveryKey(d)
		if ck == "" || !want[ck] {
			t.Unexpected = append(t.Unexpected, fmt.Sprintf("%s (key %s)", describe(d), d.Key))
			continue
		}
		id := d.Event.ID
		if keys[id] == nil {
			keys[id] = map[string]bool{}
		}
		keys[id][d.Key] = true
		if ids[ck] == nil {
			ids[ck] = map[string]bool{}
		}
		ids[ck][id] = true
		if d.OK() {
			accepted[id]++
			delivered[ck] = true
		}
	}
	for _, c := range produced {
		if !delivered[c.Key()] {
			t.Lost = append(t.Lost, c.Key())
		}
	}
	sort.Strings(t.Lost)
	t.Delivered = len(delivered)
	for _, n := range accepted {
		if n > 1 {
			t.Duplicates += n - 1
		}
	}
	for id, ks := range keys {
		if len(ks) > 1 {
			t.KeyConflicts = append(t.KeyConflicts, fmt.Sprintf("event %s: keys %v", id, setList(ks)))
		}
	}
	for ck, evs := range ids {
		if len(evs) > 1 {
			t.IDConflicts = append(t.IDConflicts, fmt.Sprintf("change %s: event ids %v", ck, setList(evs)))
		}
	}
	sort.Strings(t.KeyConflicts)
	sort.Strings(t.IDConflicts)
	return t
}

// Problems describes what is wrong with the tally, or "" when every
// change was delivered, each event under one idempotency key and each
// change under one event id.
func (t Tally) Problems() string {
	var b strings.Builder
	list := func(what string, l []string) {
		if len(l) == 0 {
			return
		}
		fmt.Fprintf(&b, "%d %s, e.g. %s; ", len(l), what, strings.Join(l[:min(5, len(l))], ", "))
	}
	list("lost", t.Lost)
	list("events with several idempotency keys", t.KeyConflicts)
	list("changes under several event ids", t.IDConflicts)
	list("unexpected requests", t.Unexpected)
	return strings.TrimSuffix(b.String(), "; ")
}

func describe(d *Delivery) string {
	if d.Event == nil {
		return "/" + d.Path + " request without an event"
	}
	return fmt.Sprintf("/%s %s %s %s data=%v", d.Path, d.Event.ID, d.Event.Type, d.Event.EntityID, d.Event.Data)
}

func setList(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Range returns the ints from..to-1.
func Range(from, to int) []int {
	out := make([]int, 0, max(to-from, 0))
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// OutOfOrder lists the changes first accepted after a later change of the
// same entity (by data.n) was first accepted.
func OutOfOrder(reqs []*Delivery) []string {
	type first struct {
		n  int64
		at time.Time
	}
	seen := map[string]bool{}
	byEntity := map[string][]first{}
	for _, d := range reqs {
		k := DeliveryKey(d)
		if k == "" || !d.OK() || seen[k] {
			continue
		}
		seen[k] = true
		n, _ := d.Event.Data["n"].(int64)
		byEntity[d.Event.EntityID] = append(byEntity[d.Event.EntityID], first{n, d.At})
	}
	var bad []string
	for id, fs := range byEntity {
		sort.SliceStable(fs, func(i, j int) bool { return fs[i].at.Before(fs[j].at) })
		for i := 1; i < len(fs); i++ {
			if fs[i].n < fs[i-1].n {
				bad = append(bad, fmt.Sprintf("entity %s: change n=%d first delivered after n=%d", id, fs[i].n, fs[i-1].n))
			}
		}
	}
	sort.Strings(bad)
	return bad
}
