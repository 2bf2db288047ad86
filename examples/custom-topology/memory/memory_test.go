package memory_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/millrace/millrace/stores"

	"github.com/google/uuid"

	"github.com/millrace/millrace/cmd/millrace/cli"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/examples/custom-topology/memory"
	"github.com/millrace/millrace/internal/routertest"
	"github.com/millrace/millrace/router"
)

// options are the built-in registries plus the memory topology: the one
// registration line a custom binary adds.
func options(t *testing.T) cli.Options {
	t.Helper()
	o := cli.Defaults()
	o.Topologies.MustRegister(memory.Topology())
	return o
}

// receiver records the webhook calls it answers with 200; /reject
// answers 400, a permanent failure.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []string
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		if req.URL.Path == "/reject" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.bodies = append(r.bodies, string(b))
		r.mu.Unlock()
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) received() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bodies...)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func post(t *testing.T, addr string, ev *event.Event) {
	t.Helper()
	b, err := event.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post("http://"+addr+"/v1/events", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST /v1/events: %s %s", resp.Status, msg)
	}
}

// TestEventsThroughTheMemoryTopology registers the topology from outside
// the core and runs events through it end to end: HTTP ingest, the
// GoChannel bus, the observers and a webhook; an event whose webhook
// refuses it lands in the memory dead-letter store, which the admin API
// lists.
func TestEventsThroughTheMemoryTopology(t *testing.T) {
	const tokenEnv, token = "MEMORY_TOPOLOGY_TEST_ADMIN_TOKEN", "admin-token-7f3"
	t.Setenv(tokenEnv, token)
	hooks := newReceiver(t)
	cfg, err := config.Parse(fmt.Appendf(nil, `
topology = "memory"
[http]
addr = "127.0.0.1:0"
admin_token_env = %q
[router]
shutdown_timeout = "5s"
[observers.orders]
entity = "Order"
actions = [{ type = "webhook", url = "%s/orders", allow_private = true, timeout = "5s" },
           { type = "publish", topic = "orders_out" }]
[observers.refunds]
entity = "Refund"
actions = [{ type = "webhook", url = "%s/reject", allow_private = true, timeout = "5s" }]
`, tokenEnv, hooks.URL, hooks.URL), nil)
	if err != nil {
		t.Fatal(err)
	}
	o := options(t)
	addr, _ := routertest.Start(t, cfg, router.Options{Actions: o.Actions, Topologies: o.Topologies})

	var ids []string
	for i := range 3 {
		ev := &event.Event{ID: uuid.NewString(), Type: event.Insert, Entity: "Order", EntityID: "42",
			Data: map[string]any{"n": i}, Timestamp: time.Now().UTC()}
		ids = append(ids, ev.ID)
		post(t, addr, ev)
	}
	waitFor(t, "three webhook calls", func() bool { return len(hooks.received()) == 3 })
	for i, body := range hooks.received() {
		var got event.Event
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("webhook body %q: %v", body, err)
		}
		if got.ID != ids[i] {
			t.Errorf("webhook call %d carried event %s; want %s (publish order)", i, got.ID, ids[i])
		}
	}

	refund := &event.Event{ID: uuid.NewString(), Type: event.Insert, Entity: "Refund", EntityID: "9", Timestamp: time.Now().UTC()}
	post(t, addr, refund)
	var list router.DeadLetterList
	waitFor(t, "the dead letter", func() bool {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/dlq", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		list = router.DeadLetterList{}
		return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&list) == nil && list.Total == 1
	})
	if e := list.Entries[0]; e.EventID != refund.ID || e.Observer != "refunds" || e.Reason != stores.ReasonPermanent {
		t.Errorf("dead letter = %+v; want event %s, observer refunds, reason %s", e, refund.ID, stores.ReasonPermanent)
	}
}

// TestValidate: the topology's own checks, through the same path as
// `millrace validate`, name their keys.
func TestValidate(t *testing.T) {
	o := options(t)
	for _, c := range []struct {
		toml, want string
	}{
		{"topology = \"memory\"\n", ""},
		{"topology = \"memory\"\nrole = \"observe\"\n", `role: the memory topology runs in one process: role must be all, got "observe"`},
		{"topology = \"memory\"\n[[sources]]\nname = \"db\"\npostgres_url = \"postgres://x\"\n", "sources: the memory topology does not capture"},
		{"topology = \"memory\"\n[[observers.o.actions]]\ntype = \"publish\"\ntopic = \"events\"\nbody = '{\"id\": \"x\"}'\n",
			`observers.o.actions[0].topic: the memory topology hands an event to the observers before the publish returns`},
		// The publish action's own check: the bus has topics.
		{"topology = \"memory\"\n[[observers.o.actions]]\ntype = \"publish\"\ntopic = \"orders_out\"\n", ""},
	} {
		cfg, err := config.Parse([]byte(c.toml), nil)
		if err == nil {
			err = router.Check(cfg, o.Actions, o.Topologies)
		}
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v; want valid", c.toml, err)
		case c.want != "" && (err == nil || !strings.HasPrefix(err.Error(), c.want)):
			t.Errorf("%s: %v; want %s…", c.toml, err, c.want)
		}
	}
}

func TestDeadLetters(t *testing.T) {
	ctx := context.Background()
	s := memory.NewDeadLetters(2)
	for _, obs := range []string{"a", "b", "a"} {
		if _, err := s.Put(ctx, stores.DeadLetter{Observer: obs, Reason: stores.ReasonPermanent}); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := s.Count(ctx); n != 2 {
		t.Errorf("Count = %d; want 2 (max entries)", n)
	}
	l, _ := s.List(ctx, stores.DeadLetterFilter{Observer: "a"})
	if len(l) != 1 || l[0].ID != "3" {
		t.Errorf("List(observer a) = %+v; want entry 3", l)
	}
	if _, err := s.Get(ctx, "1"); !errors.Is(err, stores.ErrNotFound) {
		t.Errorf("Get of a dropped entry = %v; want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "2"); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Purge(ctx); n != 1 {
		t.Errorf("Purge = %d; want 1", n)
	}
}
