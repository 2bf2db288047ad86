package router_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/millrace/millrace/event"
)

// Two tenants share one slow endpoint (200 ms a request, at most 64 at
// once, fewer than the router's 96 slots, so the flood lasts 30 s): one
// sends 10,000 events at once, the other 100 at 10/s beside it. The small tenant's p99 from
// publish to delivered (the endpoint answered) stays under twice its p99
// with the endpoint to itself: the slots and the endpoint's limit serve
// the tenants in turn, and the flood fits in router.max_buffered.
func TestTenantsShareASlowEndpoint(t *testing.T) {
	t.Parallel()
	const (
		latency = 200 * time.Millisecond
		flood   = 10000
		small   = 100
		every   = 100 * time.Millisecond
	)
	var (
		mu       sync.Mutex
		arrived  = map[string]time.Time{}
		answered = map[string]time.Time{}
		count    = map[string]int{}
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		now := time.Now()
		var ev struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(body, &ev)
		mu.Lock()
		if _, ok := arrived[ev.ID]; !ok {
			arrived[ev.ID] = now
		}
		count[ev.ID]++
		mu.Unlock()
		time.Sleep(latency)
		mu.Lock()
		answered[ev.ID] = time.Now()
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	// The test is about sharing the endpoint, not durability: with an
	// fsync per publish (embedded.sync = "always") the flood took as long
	// to publish as to deliver on a busy machine, and was over before the
	// small tenant began.
	n := startDeliveryEmbedded(t, webhookRegistry(t), "fair", `sync = "2m"
`, `max_in_flight = 96
max_buffered = 12000
[delivery]
max_concurrency = 64
`+webhookObserver("hook", srv.URL+"/hook", ""))

	ctx := context.Background()
	tenantEvent := func(tenant string, i int) *event.Event {
		ev := deliveryEvent(tenant + "-" + strconv.Itoa(i))
		ev.TenantID = tenant
		return ev
	}
	// sendSmall publishes the small tenant's events at their pace and
	// returns their latencies to delivered and to the request's arrival,
	// each sorted, once all were delivered.
	sendSmall := func(phase string) (delivered, reached []time.Duration, lastSent time.Time) {
		sent := map[string]time.Time{}
		for i := range small {
			ev := tenantEvent("small", i)
			ev.EntityID = phase + ev.EntityID
			sent[ev.ID] = time.Now()
			if err := n.r.Publish(ctx, ev); err != nil {
				t.Fatalf("publish: %v", err)
			}
			lastSent = time.Now()
			time.Sleep(every)
		}
		eventually(t, 2*time.Minute, "the small tenant's events delivered", func() bool {
			mu.Lock()
			defer mu.Unlock()
			delivered, reached = delivered[:0], reached[:0]
			for id, at := range sent {
				done, ok := answered[id]
				if !ok {
					return false
				}
				delivered = append(delivered, done.Sub(at))
				reached = append(reached, arrived[id].Sub(at))
			}
			return true
		})
		slices.Sort(delivered)
		slices.Sort(reached)
		return delivered, reached, lastSent
	}
	p := func(lat []time.Duration, q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }

	alone, aloneReached, _ := sendSmall("alone")

	// The flood goes out in one burst (in batches the bus's publisher
	// takes), then the small tenant starts its pace beside it: while a
	// burst is being written, the bus server queues every producer's
	// writes behind it, which no consumer can help.
	bigIDs := make([]string, flood)
	evs := make([]*event.Event, flood)
	for i := range evs {
		evs[i] = tenantEvent("big", i)
		bigIDs[i] = evs[i].ID
	}
	start := time.Now()
	for b := 0; b < flood; b += 500 {
		if err := n.r.Publish(ctx, evs[b:b+500]...); err != nil {
			t.Fatalf("publish the flood: %v", err)
		}
	}
	published := time.Since(start)
	shared, sharedReached, smallSent := sendSmall("shared")

	eventually(t, 3*time.Minute, "the flood delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range bigIDs {
			if _, ok := answered[id]; !ok {
				return false
			}
		}
		return true
	})
	mu.Lock()
	defer mu.Unlock()
	var floodEnd time.Time
	for _, id := range bigIDs {
		floodEnd = maxTime(floodEnd, answered[id])
	}
	for id, c := range count {
		if c != 1 {
			t.Errorf("event %s delivered %d times; want once", id, c)
		}
	}
	ms := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	t.Logf("flood of %d published in %v, delivered in %v; the small tenant's p50/p99 to delivered: alone %v/%v, beside the flood %v/%v; to the request's arrival: alone %v/%v, beside the flood %v/%v",
		flood, ms(published), ms(floodEnd.Sub(start)),
		ms(p(alone, 0.5)), ms(p(alone, 0.99)), ms(p(shared, 0.5)), ms(p(shared, 0.99)),
		ms(p(aloneReached, 0.5)), ms(p(aloneReached, 0.99)), ms(p(sharedReached, 0.5)), ms(p(sharedReached, 0.99)))
	if !floodEnd.After(smallSent) {
		t.Fatalf("the flood was delivered (%v) before the small tenant sent its last event: they did not share the endpoint; make the flood larger",
			floodEnd.Sub(start))
	}
	if got, limit := p(shared, 0.99), 2*p(alone, 0.99); got >= limit {
		t.Errorf("the small tenant's p99 beside the flood is %v; want under twice its p99 alone (%v)", got, limit)
	}
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
