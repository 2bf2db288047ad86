package verify

import (
	"fmt"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
)

func changes(entities []int, seqs int64) []Change {
	var out []Change
	for _, e := range entities {
		var sum int64
		for s := int64(1); s <= seqs; s++ {
			sum = Checksum(sum, e, s)
			out = append(out, Change{Entity: e, Seq: s, Sum: sum})
		}
	}
	return out
}

func deliver(cs ...Change) []Delivery {
	out := make([]Delivery, len(cs))
	at := time.Unix(0, 0)
	for i, c := range cs {
		out[i] = Delivery{Entity: c.Entity, Seq: c.Seq, Sum: c.Sum, Key: fmt.Sprintf("%d/%d", c.Entity, c.Seq), At: at.Add(time.Duration(i) * time.Millisecond)}
	}
	return out
}

// TestTallyClean: every change once, in order, is a clean result.
func TestTallyClean(t *testing.T) {
	made := changes([]int{1, 2}, 3)
	r := Tally(made, deliver(made...))
	if !r.OK() || r.Duplicates != 0 || r.Delivered != 6 {
		t.Fatalf("clean run tallied as %+v", r)
	}
}

// TestTallyCatchesFaults: a missing change is lost, a change delivered
// after a later one of its entity is reordered, a second delivery is a
// duplicate, a wrong checksum is corrupt, and deliveries of other
// entities are ignored.
func TestTallyCatchesFaults(t *testing.T) {
	made := changes([]int{1, 2}, 3)
	// entity 1: 1, 3, 2 (reordered), 3 again (duplicate); entity 2: 1, 3
	// with seq 2 lost, seq 3 with a wrong checksum.
	bad := made[5]
	bad.Sum++
	other := Change{Entity: 99, Seq: 1}
	r := Tally(made, deliver(made[0], made[2], made[1], made[2], made[3], bad, other))
	if r.OK() {
		t.Fatal("a faulty run tallied as OK")
	}
	if len(r.Lost) != 1 || r.Lost[0] != "2/2" {
		t.Errorf("lost = %v, want [2/2]", r.Lost)
	}
	if len(r.Reordered) != 1 || r.Reordered[0] != "1/2 after 1/3" {
		t.Errorf("reordered = %v, want [1/2 after 1/3]", r.Reordered)
	}
	if r.Duplicates != 1 {
		t.Errorf("duplicates = %d, want 1", r.Duplicates)
	}
	if len(r.Corrupt) != 1 {
		t.Errorf("corrupt = %v, want one", r.Corrupt)
	}
	if len(r.Rekeyed) != 0 {
		t.Errorf("rekeyed = %v, want none", r.Rekeyed)
	}
}

// TestTallyRekeyed: a second delivery of a change under another
// idempotency key is a fault, not only a duplicate.
func TestTallyRekeyed(t *testing.T) {
	made := changes([]int{1}, 2)
	got := deliver(made...)
	again := got[1]
	again.Key = "other"
	r := Tally(made, append(got, again))
	if r.OK() || r.Duplicates != 1 || len(r.Rekeyed) != 1 {
		t.Fatalf("a change delivered again under another key tallied as %+v", r)
	}
}

// TestTolerated: duplicates are a warning only after a SIGKILL and while
// the dedup store is cut off; in any other scenario they fail the run.
func TestTolerated(t *testing.T) {
	cfg := &config.Config{Dedup: config.Dedup{Enabled: true}}
	s := &scratch{Dedup: "redis"}
	for _, name := range []string{Baseline, EndpointOutage, CaptureKilled} {
		if why := tolerated(name, cfg, s); why != "" {
			t.Errorf("%s: duplicates tolerated (%s)", name, why)
		}
		row := Row{Scenario: name, Result: Result{Duplicates: 1}}
		if !row.Failed() {
			t.Errorf("%s: a duplicate does not fail the row", name)
		}
	}
	for _, name := range []string{KillWorker, DedupUnreachable} {
		row := Row{Scenario: name, Result: Result{Duplicates: 1}, Tolerated: tolerated(name, cfg, s)}
		if row.Tolerated == "" || row.Failed() {
			t.Errorf("%s: a duplicate under its first key fails the row", name)
		}
		row.Rekeyed = []string{"1/1"}
		if !row.Failed() {
			t.Errorf("%s: a duplicate under another key does not fail the row", name)
		}
	}
}
