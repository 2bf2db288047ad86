package router_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/webhook"
)

// Two observers whose webhooks post to one dead host share the host's
// circuit breaker: it opens after 5 failures between them and refuses
// both, and it is one millrace_breaker_state series named after the host.
// An observer posting to a healthy host is not held back.
func TestBreakerIsPerEndpoint(t *testing.T) {
	t.Parallel()
	var deadCalls, healthyCalls atomic.Int64
	dead := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		deadCalls.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(dead.Close)
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		healthyCalls.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(healthy.Close)
	// A first open interval of 30s: no trial call while the test counts.
	n := startDeliveryWith(t, webhookRegistry(t), "a", "[breaker]\nfirst_open_interval = \"30s\"\n"+webhookObserver("one", dead.URL+"/one", "")+
		webhookObserver("two", dead.URL+"/two", "")+webhookObserver("fine", healthy.URL+"/fine", ""))
	n.publish(t, deliveryEvent("1"), 1, nil, nil)

	deadKey, healthyKey := handlers.URLEndpoint(dead.URL), handlers.URLEndpoint(healthy.URL)
	refused := func(observer string) float64 {
		return n.metric(t, "millrace_action_runs_total", map[string]string{"observer": observer, "result": "breaker_open"})
	}
	eventually(t, 30*time.Second, "the dead host's breaker refusing both observers", func() bool {
		return refused("one") >= 1 && refused("two") >= 1
	})
	// Each failure counts against the one breaker: 5 open it, and at most
	// one more was in flight (one per observer). A breaker per action
	// would have let 5 through for each observer.
	if got := deadCalls.Load(); got < 5 || got > 6 {
		t.Errorf("the dead host got %d requests; want 5 (6 at most): both observers' failures open one breaker", got)
	}
	if got := n.metric(t, "millrace_breaker_state", map[string]string{"breaker": deadKey}); got != 2 {
		t.Errorf("millrace_breaker_state{breaker=%q} = %v; want 2 (open)", deadKey, got)
	}
	eventually(t, 10*time.Second, "the healthy observer's success", func() bool {
		return n.metric(t, "millrace_observer_runs_total", map[string]string{"observer": "fine", "result": "succeeded"}) == 1
	})
	if got := n.metric(t, "millrace_breaker_state", map[string]string{"breaker": healthyKey}); got != 0 || healthyCalls.Load() != 1 {
		t.Errorf("healthy host: breaker state %v after %d requests; want 0 (closed) after 1", got, healthyCalls.Load())
	}
	want := []string{deadKey, healthyKey}
	slices.Sort(want)
	if got := breakerKeys(t, n); !slices.Equal(got, want) {
		t.Errorf("breakers %v; want one per host, %v", got, want)
	}
}

// breakerKeys returns the breaker labels of millrace_breaker_state,
// sorted.
func breakerKeys(t *testing.T, n *deliveryNode) []string {
	t.Helper()
	mfs, err := n.r.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, mf := range mfs {
		if mf.GetName() != "millrace_breaker_state" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "breaker" {
					keys = append(keys, l.GetValue())
				}
			}
		}
	}
	slices.Sort(keys)
	return keys
}

// An action's own breaker open_interval takes effect: with [breaker]
// consecutive_failures = 2 both hosts' breakers open after their first
// two failures; the breaker of the action whose override says
// open_interval = "300ms" (which caps [breaker]'s first_open_interval)
// lets a probe through and its event succeeds, while [breaker]'s
// first_open_interval = "30s" keeps the other host's breaker open
// meanwhile.
func TestBreakerOpenIntervalOverride(t *testing.T) {
	t.Parallel()
	flaky := func(calls *atomic.Int64) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if calls.Add(1) <= 2 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		}))
		t.Cleanup(s.Close)
		return s
	}
	var quickCalls, slowCalls atomic.Int64
	quick, slow := flaky(&quickCalls), flaky(&slowCalls)
	n := startDeliveryWith(t, webhookRegistry(t), "a", "[breaker]\nconsecutive_failures = 2\nfirst_open_interval = \"30s\"\n"+
		webhookObserver("quick", quick.URL+"/q", `breaker = { open_interval = "300ms" }`)+webhookObserver("slow", slow.URL+"/s", ""))
	n.publish(t, deliveryEvent("1"), 1, nil, nil)

	succeeded := func(observer string) float64 {
		return n.metric(t, "millrace_observer_runs_total", map[string]string{"observer": observer, "result": "succeeded"})
	}
	refused := func(observer string) float64 {
		return n.metric(t, "millrace_action_runs_total", map[string]string{"observer": observer, "result": "breaker_open"})
	}
	eventually(t, 20*time.Second, "both breakers refusing a call", func() bool {
		return refused("quick") >= 1 && refused("slow") >= 1
	})
	eventually(t, 20*time.Second, "the quick observer's success after its 300ms open interval", func() bool {
		return succeeded("quick") == 1
	})
	if got := quickCalls.Load(); got != 3 {
		t.Errorf("quick host got %d requests; want 3: two failures open its breaker after consecutive_failures = 2, one probe", got)
	}
	// The slow observer's event comes back when its breaker lets a trial
	// through, 30s after it opened: meanwhile its host gets nothing.
	time.Sleep(time.Second)
	if got := slowCalls.Load(); got != 2 || succeeded("slow") != 0 {
		t.Errorf("slow host got %d requests, %v successes; want 2 and 0: its breaker stays open for 30s",
			got, succeeded("slow"))
	}
	if got := n.metric(t, "millrace_breaker_state", map[string]string{"breaker": handlers.URLEndpoint(slow.URL)}); got != 2 {
		t.Errorf("slow host breaker state = %v; want 2 (open)", got)
	}
}

// webhookRegistry is a registry with the webhook action.
func webhookRegistry(t *testing.T) *handlers.Registry {
	t.Helper()
	reg := handlers.NewRegistry()
	if err := webhook.Register(reg); err != nil {
		t.Fatal(err)
	}
	return reg
}

// webhookObserver is the config of observer name, on Order inserts,
// whose one webhook posts to url with extra lines in its table, retried
// every 20ms up to 20 times.
func webhookObserver(name, url, extra string) string {
	return fmt.Sprintf(`
[observers.%[1]s]
event = "INSERT"
entity = "Order"
retry = { max_attempts = 20, backoff = "fixed", initial = "20ms", jitter = 0.0 }
[[observers.%[1]s.actions]]
type = "webhook"
url = %[2]q
allow_private = true
%[3]s
`, name, url, extra)
}
