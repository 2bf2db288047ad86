package verify

import (
	"fmt"
	"sort"
	"time"
)

// Change is one change verify made: the seq-th change of an entity (seq
// from 1), with the rolling checksum the delivered event must carry.
type Change struct {
	Entity int
	Seq    int64
	Sum    int64
	// At is when it was made (committed, or accepted by ingest).
	At time.Time
}

// Delivery is one request the receiver accepted.
type Delivery struct {
	Entity int
	Seq    int64
	Sum    int64
	// Key is the Idempotency-Key header: what an endpoint drops a
	// duplicate by.
	Key string
	At  time.Time
}

// Result is the tally of one scenario.
type Result struct {
	// Changes made, and how many of them were delivered at least once.
	Changes, Delivered int
	// Lost lists changes never delivered ("entity/seq"), sorted.
	Lost []string
	// Duplicates counts accepted deliveries of a change beyond its first.
	Duplicates int
	// Rekeyed lists changes delivered again under another idempotency
	// key than their first delivery's: duplicates an endpoint cannot drop.
	Rekeyed []string
	// Reordered lists changes first delivered after a later change of
	// the same entity was first delivered.
	Reordered []string
	// Corrupt lists deliveries whose checksum is not the one written.
	Corrupt []string
	// Last is when the last change was first delivered.
	Last time.Time
}

// OK reports whether nothing was lost, reordered, corrupted or
// delivered again under another idempotency key.
func (r Result) OK() bool {
	return len(r.Lost) == 0 && len(r.Reordered) == 0 && len(r.Corrupt) == 0 && len(r.Rekeyed) == 0
}

// Tally compares the changes made with the deliveries received, given in
// arrival order. Deliveries of entities without a change are ignored:
// they belong to another scenario's slice.
func Tally(made []Change, got []Delivery) Result {
	type key struct {
		entity int
		seq    int64
	}
	want := make(map[key]int64, len(made))
	for _, c := range made {
		want[key{c.Entity, c.Seq}] = c.Sum
	}
	entities := map[int]bool{}
	for _, c := range made {
		entities[c.Entity] = true
	}
	r := Result{Changes: len(made)}
	seen := map[key]string{}   // change → idempotency key of its first delivery
	highest := map[int]int64{} // entity → highest seq first-delivered so far
	for _, d := range got {
		if !entities[d.Entity] {
			continue
		}
		k := key{d.Entity, d.Seq}
		sum, ok := want[k]
		if !ok {
			r.Corrupt = append(r.Corrupt, fmt.Sprintf("%d/%d: never written", d.Entity, d.Seq))
			continue
		}
		if d.Sum != sum {
			r.Corrupt = append(r.Corrupt, fmt.Sprintf("%d/%d: checksum %d, written %d", d.Entity, d.Seq, d.Sum, sum))
		}
		if first, ok := seen[k]; ok {
			r.Duplicates++
			if d.Key != first {
				r.Rekeyed = append(r.Rekeyed, fmt.Sprintf("%d/%d: key %s, first %s", d.Entity, d.Seq, d.Key, first))
			}
			continue
		}
		seen[k] = d.Key
		if h := highest[d.Entity]; d.Seq < h {
			r.Reordered = append(r.Reordered, fmt.Sprintf("%d/%d after %d/%d", d.Entity, d.Seq, d.Entity, h))
		} else {
			highest[d.Entity] = d.Seq
		}
		if d.At.After(r.Last) {
			r.Last = d.At
		}
	}
	r.Delivered = len(seen)
	for _, c := range made {
		if _, ok := seen[key{c.Entity, c.Seq}]; !ok {
			r.Lost = append(r.Lost, fmt.Sprintf("%d/%d", c.Entity, c.Seq))
		}
	}
	sort.Strings(r.Lost)
	return r
}
