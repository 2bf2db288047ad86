package router_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/millrace/millrace/handlers"
)

// An endpoint that takes 20 requests at once and answers 429 with
// Retry-After: 1 above that: millrace's adaptive limit for it settles at
// 20 within 5 s, every event is delivered once, and after convergence
// fewer than 5 % of its requests are refused.
func TestAdaptiveLimitConvergesOnAnEndpoint(t *testing.T) {
	t.Parallel()
	const (
		capacity = 20
		events   = 3000
		settle   = 5 * time.Second
	)
	var (
		mu                 sync.Mutex
		accepted, arriving int
		start              time.Time
		delivered          = map[string]int{}
		late, lateRefused  int
		lateMaxArriving    int
		earlyRefused       int
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		if start.IsZero() {
			start = time.Now()
		}
		arriving++
		isLate := time.Since(start) > settle
		if isLate {
			late++
			lateMaxArriving = max(lateMaxArriving, arriving)
		}
		if accepted >= capacity {
			arriving--
			if isLate {
				lateRefused++
			} else {
				earlyRefused++
			}
			mu.Unlock()
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		accepted++
		mu.Unlock()
		time.Sleep(50 * time.Millisecond)
		var ev struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(body, &ev)
		mu.Lock()
		delivered[ev.ID]++
		// Counted out before the answer leaves: millrace starts the next
		// request only after it read this one's answer.
		accepted--
		arriving--
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	// No probe above the learned limit within the run: the test shows
	// where the limit settles (TestLimitProbesAfterTheHold shows the
	// probe).
	n := startDeliveryWith(t, webhookRegistry(t), "a", fmt.Sprintf(`
[delivery]
probe_after = "10m"
[observers.hook]
event = "INSERT"
entity = "Order"
retry = { max_attempts = 50, backoff = "fixed", initial = "100ms", jitter = 0.0 }
[[observers.hook.actions]]
type = "webhook"
url = %q
allow_private = true
`, srv.URL+"/hook"))
	ids := map[string]bool{}
	for i := range events {
		ev := deliveryEvent(strconv.Itoa(i))
		ids[ev.ID] = true
		n.publish(t, ev, 1, nil, nil)
	}
	done := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(delivered) == events
	}
	eventually(t, 2*time.Minute, "every event delivered", done)

	mu.Lock()
	defer mu.Unlock()
	elapsed := time.Since(start)
	for id, c := range delivered {
		if !ids[id] || c != 1 {
			t.Errorf("event %s delivered %d times; want once", id, c)
		}
	}
	if elapsed < settle+2*time.Second {
		t.Fatalf("the run took %v: too short to show the limit after %v; make it longer", elapsed, settle)
	}
	t.Logf("%d events in %v; before %v: %d refused; after: %d requests, %d refused (%.2f %%), at most %d arriving at once",
		events, elapsed.Round(time.Millisecond), settle, earlyRefused, late, lateRefused, 100*float64(lateRefused)/float64(late), lateMaxArriving)
	if lateMaxArriving > capacity {
		t.Errorf("after %v up to %d requests arrived at once; want at most %d", settle, lateMaxArriving, capacity)
	}
	if float64(lateRefused) >= 0.05*float64(late) {
		t.Errorf("after %v, %d of %d requests were refused; want under 5 %%", settle, lateRefused, late)
	}
	key := handlers.URLEndpoint(srv.URL)
	if got := n.metric(t, "millrace_endpoint_concurrency_limit", map[string]string{"endpoint": key}); got != capacity {
		t.Errorf("millrace_endpoint_concurrency_limit{endpoint=%q} = %v; want %d", key, got, capacity)
	}
}
