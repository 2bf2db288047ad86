package fault_test

import (
	"context"
	"net/http"
	"os"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/internal/e2e"
)

// TestEndpointOutageCatchUp: the webhook endpoint answers 503 for 90 s
// (MILLRACE_FAULT_OUTAGE sets another length) while changes flow at
// about 200 per second, captured from PostgreSQL, then comes back. Nothing may be lost, no
// effect may run twice, each entity's changes must be first delivered in
// commit order, and the last line reports how fast the backlog drained:
// the wait from the endpoint's return to the first delivery (the open
// circuit breaker's interval), and the rate from then until every change
// was delivered.
func TestEndpointOutageCatchUp(t *testing.T) {
	for _, topology := range []string{"embedded", "nats"} {
		t.Run(topology, func(t *testing.T) {
			t.Parallel()
			const (
				rows         = 400
				batch, pause = 20, 100 * time.Millisecond // 200 changes/s, a round of the rows in 2 s
			)
			outage := 90 * time.Second
			if v := os.Getenv("MILLRACE_FAULT_OUTAGE"); v != "" {
				d, err := time.ParseDuration(v)
				if err != nil {
					t.Fatalf("MILLRACE_FAULT_OUTAGE: %v", err)
				}
				outage = d
			}
			// Changes flow from before the outage until after it.
			rounds := int((outage+14*time.Second)/(2*time.Second)) + 1
			recv := e2e.NewReceiver(t)
			var down atomic.Bool
			recv.Handle("all", func(*e2e.Delivery) (int, time.Duration) {
				if down.Load() {
					return http.StatusServiceUnavailable, 0
				}
				return http.StatusNoContent, 0
			})
			r := e2e.NewRig(t, topology, e2e.Options{Receiver: recv, Observers: observeAll(recv)})
			r.Start()
			ctx, cancel := context.WithTimeout(context.Background(), outage+4*time.Minute)
			defer cancel()
			done := flow(ctx, r, rows, rounds, batch, pause)
			recv.Wait(t, time.Minute, "a first delivery", func() bool { return recv.Count("all") > 0 })
			time.Sleep(2 * time.Second)
			down.Store(true)
			time.Sleep(outage)
			down.Store(false)
			back := time.Now()
			producedBefore := 0
			for _, c := range r.Produced() {
				if c.At.Before(back) {
					producedBefore++
				}
			}
			deliveredBefore := acceptedBetween(recv, "all", time.Time{}, back)
			tl := deliverAll(t, r, recv, "all", done, 3*time.Minute, nil)
			reqs := recv.Requests("all")
			for _, o := range e2e.OutOfOrder(reqs)[:min(10, len(e2e.OutOfOrder(reqs)))] {
				t.Errorf("%s", o)
			}
			if tl.Duplicates > 0 {
				t.Errorf("%d effects ran twice", tl.Duplicates)
			}
			// The drain: from the endpoint's return until the backlog of
			// changes made before it was delivered.
			var after []time.Time
			for _, d := range reqs {
				if d.OK() && !d.At.Before(back) {
					after = append(after, d.At)
				}
			}
			sort.Slice(after, func(i, j int) bool { return after[i].Before(after[j]) })
			backlog := producedBefore - deliveredBefore
			if backlog <= 0 || len(after) < backlog {
				t.Fatalf("no backlog to drain (%d produced, %d delivered before the endpoint came back)", producedBefore, deliveredBefore)
			}
			firstAfter, drained := after[0].Sub(back), after[backlog-1].Sub(after[0])
			rate := float64(backlog) / max(drained.Seconds(), 0.001)
			t.Logf("%s; took %s", r.Describe(), time.Since(back).Round(time.Second))
			// The last line is the run's result.
			t.Logf("outage %s: changes=%d backlog=%d first_delivery_after=%s drained_in=%s rate=%.0f/s lost=%d duplicates=%d",
				topology, tl.Changes, backlog, firstAfter.Round(10*time.Millisecond), drained.Round(10*time.Millisecond), rate,
				len(tl.Lost), tl.Duplicates)
		})
	}
}
