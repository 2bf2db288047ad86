package router

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/stores"
)

// hookCounter is a webhook receiver that counts its requests per
// webhook-id (one per event and action) and answers 400, a permanent
// error, while failing is set, 204 otherwise.
type hookCounter struct {
	failing atomic.Bool
	mu      sync.Mutex
	byID    map[string]int
}

func newHookCounter(t *testing.T, failing bool) (*hookCounter, string) {
	h := &hookCounter{byID: map[string]int{}}
	h.failing.Store(failing)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.byID[r.Header.Get("webhook-id")]++
		h.mu.Unlock()
		if h.failing.Load() {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(s.Close)
	return h, s.URL
}

// requests returns the counts per webhook-id.
func (h *hookCounter) requests() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]int, len(h.byID))
	for k, v := range h.byID {
		out[k] = v
	}
	return out
}

// total counts every request.
func (h *hookCounter) total() int {
	n := 0
	for _, v := range h.requests() {
		n += v
	}
	return n
}

// A dead letter records the observer's actions that succeeded, and a
// replay made after cache.ttl has forgotten them runs only the failed
// action: the successful action's receiver saw the event once. With
// all_actions (millrace dlq replay --all-actions) every action runs
// again.
func TestReplayRunsOnlyFailedActions(t *testing.T) {
	const token = "t"
	good, goodURL := newHookCounter(t, false)
	bad, badURL := newHookCounter(t, true)
	r, addr, _ := dlqTestRouter(t, adminTokenEnv(t, token), `
[cache]
ttl = "1s"
[observers.o]
entity = "Order"
retry = { max_attempts = 1 }
[[observers.o.actions]]
type = "webhook"
url = "`+goodURL+`/good"
allow_private = true
[[observers.o.actions]]
type = "webhook"
url = "`+badURL+`/bad"
allow_private = true
`)
	ctx := context.Background()
	store := r.backend.DeadLetters
	hashes := actionHashes(t, r, "o")

	// deadLetter publishes a new event and waits for its dead letter.
	deadLetter := func() stores.DeadLetter {
		t.Helper()
		bad.failing.Store(true)
		ev, _ := testEvent(t, "Order")
		if err := r.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
		var dl stores.DeadLetter
		waitUntil(t, "the event's dead letter", func() bool {
			l, err := store.List(ctx, stores.DeadLetterFilter{Observer: "o"})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range l {
				if e.EventID == ev.ID {
					dl = e
					return true
				}
			}
			return false
		})
		if len(dl.Succeeded) != 1 || dl.Succeeded[0] != (stores.SucceededAction{Index: 0, Key: hashes[0]}) {
			t.Fatalf("dead letter succeeded = %+v; want action 0, key %s", dl.Succeeded, hashes[0])
		}
		return dl
	}
	// replay replays dl once cache.ttl is over, and waits for the
	// observer's success.
	replay := func(dl stores.DeadLetter, allActions bool, succeeded string) {
		t.Helper()
		time.Sleep(1500 * time.Millisecond) // past cache.ttl: the result cache no longer knows action 0 succeeded
		bad.failing.Store(false)
		var res ReplayResponse
		if code := adminCall(t, http.MethodPost, addr+"/v1/dlq/replay", token,
			ReplayRequest{IDs: []string{dl.ID}, AllActions: allActions}, &res); code != http.StatusOK || res.Replayed != 1 {
			t.Fatalf("replay = %d %+v", code, res)
		}
		waitUntil(t, "the replayed event's success", func() bool {
			return metricValue(t, addr, `millrace_observer_runs_total{observer="o",result="succeeded"}`) == succeeded
		})
	}

	dl := deadLetter()
	replay(dl, false, "1")
	if got := good.requests(); len(got) != 1 || good.total() != 1 {
		t.Errorf("the successful action's receiver got %v; want one request: the replay skips it", got)
	}
	if got := bad.total(); got != 2 {
		t.Errorf("the failed action's receiver got %d requests; want 2 (the failure, the replay)", got)
	}

	dl = deadLetter()
	replay(dl, true, "2")
	if got := good.total(); got != 3 {
		t.Errorf("the successful action's receiver got %d requests in all; want 3: --all-actions runs it again", got)
	}
	if n, err := store.Count(ctx); err != nil || n != 0 {
		t.Errorf("dead letters left = %d, %v; want 0", n, err)
	}
}

// actionHashes returns the keys of observer's actions (stores.ActionKeys).
func actionHashes(t *testing.T, r *Router, observer string) []string {
	t.Helper()
	for _, o := range r.observers {
		if o.Name == observer {
			hashes := make([]string, len(o.Actions))
			for i, b := range o.Actions {
				hashes[i] = b.Spec.Hash
			}
			return stores.ActionKeys(hashes)
		}
	}
	t.Fatalf("no observer %s", observer)
	return nil
}
