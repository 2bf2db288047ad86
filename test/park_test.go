package test

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/internal/e2e"
)

// TestParkMovesWithItsPartition: an entity parked by one worker stays
// parked when its partition moves to a worker that started before the
// park. The new owner reads the partition's parked groups when it takes
// the partition over, before it consumes it, so the entity's next event
// joins the group instead of running; the group then replays in order
// from the new owner (docs/adr/0014-park-the-key.md).
func TestParkMovesWithItsPartition(t *testing.T) {
	for _, topology := range []string{"nats", "redis"} {
		t.Run(topology, func(t *testing.T) {
			t.Parallel()
			parkAcrossWorkers(t, topology)
		})
	}
}

func parkAcrossWorkers(t *testing.T, topology string) {
	const parked = 7
	isParked := func(d *e2e.Delivery) bool { return d.Event != nil && d.Event.EntityID == strconv.Itoa(parked) }
	recv := e2e.NewReceiver(t)
	var broken atomic.Bool
	broken.Store(true)
	recv.Handle("ordered", func(d *e2e.Delivery) (int, time.Duration) {
		if broken.Load() && isParked(d) {
			return http.StatusBadRequest, 0
		}
		return http.StatusNoContent, 0
	})
	r := e2e.NewRig(t, topology, e2e.Options{Receiver: recv, Observers: map[string]e2e.Observer{
		"ordered": {OnFailure: "park", Retry: map[string]any{"max_attempts": 1},
			Actions: []map[string]any{recv.Action("ordered", nil)}},
	}})
	if r.Partitions == 0 {
		t.Fatalf("the %s example config has no partitions", topology)
	}
	r.Start()
	// Worker b: the same config, its own HTTP port and consumer name.
	workers := []*proc{{Process: r.Proc, name: "worker a", addr: r.Addr},
		start(t, "worker b", r.Config, append(slices.Clone(r.Env), "MILLRACE_REDIS__CONSUMER=worker-b"))}
	waitDealt(t, r.Partitions, workers...)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := r.Insert(ctx, e2e.Range(1, 21), "new"); err != nil {
		t.Fatal(err)
	}
	recv.Wait(t, time.Minute, "the other entities", func() bool { return recv.Count("ordered") >= 19 })
	var owner, survivor *proc
	deadline := time.Now().Add(time.Minute)
	for owner == nil {
		for i, w := range workers {
			if e2e.MetricAt(t, w.addr, "millrace_parked_entities") == 1 {
				owner, survivor = w, workers[1-i]
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no worker parked the entity within a minute")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The owner stops cleanly: its partitions move to the survivor,
	// which started before the park.
	owner.stop(t)
	waitDealt(t, r.Partitions, survivor)
	if err := r.Update(ctx, []int{parked}, "next"); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(time.Minute)
	for e2e.MetricAt(t, survivor.addr, "millrace_parked_events") != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: parked events = %g after a minute, want 2 (the head, and the next event that joined it)",
				survivor.name, e2e.MetricAt(t, survivor.addr, "millrace_parked_events"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if tried := len(e2e.OfEntity(recv.Requests("ordered"), strconv.Itoa(parked))); tried != 1 {
		t.Fatalf("the parked entity's endpoint got %d requests, want 1: the new owner must not run its next event", tried)
	}
	broken.Store(false)
	r.Addr = survivor.addr // the admin API of the process still running
	key := r.DeadLetters(t)[0].Key
	if code, out, errOut := r.CLI(t, "dlq", "replay", "--entity", key, "--wait", "60s"); code != 0 {
		t.Fatalf("dlq replay --entity: exit %d: %s %s", code, out, errOut)
	}
	if ns := e2e.Ns(e2e.OfEntity(recv.Delivered("ordered"), strconv.Itoa(parked))); !slices.Equal(ns, []int64{0, 1}) {
		t.Errorf("parked entity delivered n=%v, want [0 1]", ns)
	}
	t.Logf("%s parked the entity, stopped; %s took its partition over and kept the park", owner.name, survivor.name)
}
