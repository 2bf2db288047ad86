package router_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/stores"

	"github.com/millrace/millrace/bus"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/middleware"
	"github.com/millrace/millrace/router"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/embedded"
)

// The delivery tests run real routers on the embedded topology with the
// dedup ledger and result cache in memory, Redis or PostgreSQL, and a
// "probe" action that counts its executions and fails when told to.

// deliveryProbe is the shared state of every probe action of a test,
// across routers.
type deliveryProbe struct {
	mu    sync.Mutex
	runs  map[string]int       // "node|action|event id" → executions
	oks   map[string]int       // "action|event id" → successes
	okAt  map[string]time.Time // "action|event id" → time of the first success
	first chan struct{}        // closed at the first execution
	once  sync.Once
	// hook, when set, runs before each execution and may block or fail it.
	hook func(ctx context.Context, node, action string, ev *event.Event, n int) error
}

func newDeliveryProbe() *deliveryProbe {
	return &deliveryProbe{runs: map[string]int{}, oks: map[string]int{}, okAt: map[string]time.Time{}, first: make(chan struct{})}
}

// probeConfig is the probe action's section.
type probeConfig struct {
	// Name tells the probes of one observer apart.
	Name string `koanf:"name"`
	// Fail makes the first Fail executions per event fail, transiently
	// unless Permanent.
	Fail      int  `koanf:"fail"`
	Permanent bool `koanf:"permanent"`
	// FailEntity limits failures to events of this entity id.
	FailEntity string `koanf:"fail_entity"`
	// Sleep is spent in each execution.
	Sleep config.Duration `koanf:"sleep"`
}

func (c probeConfig) Validate() error {
	if c.Name == "" {
		return config.Errorf("name", "is required")
	}
	return nil
}

// registry returns an action registry whose "probe" type records into p
// as node.
func (p *deliveryProbe) registry(node string) *handlers.Registry {
	reg := handlers.NewRegistry()
	handlers.MustRegister(reg, "probe", func(_ context.Context, c probeConfig, _ handlers.Deps) (handlers.Action, error) {
		return handlers.ActionFunc(func(ctx context.Context, ev *event.Event) error {
			p.once.Do(func() { close(p.first) })
			p.mu.Lock()
			p.runs[node+"|"+c.Name+"|"+ev.ID]++
			n := 0
			for _, nd := range []string{"a", "b"} {
				n += p.runs[nd+"|"+c.Name+"|"+ev.ID]
			}
			hook := p.hook
			p.mu.Unlock()
			if c.Sleep > 0 {
				if err := middleware.Sleep(ctx, c.Sleep.D()); err != nil {
					return err
				}
			}
			if hook != nil {
				if err := hook(ctx, node, c.Name, ev, n); err != nil {
					return err
				}
			}
			if n <= c.Fail && (c.FailEntity == "" || c.FailEntity == ev.EntityID) {
				err := fmt.Errorf("probe %s: failure %d of %d", c.Name, n, c.Fail)
				if c.Permanent {
					return handlers.Permanent(err)
				}
				return err
			}
			p.mu.Lock()
			k := c.Name + "|" + ev.ID
			if p.oks[k] == 0 {
				p.okAt[k] = time.Now()
			}
			p.oks[k]++
			p.mu.Unlock()
			return nil
		}), nil
	})
	return reg
}

// count returns the executions of action for event id, on node ("" for
// every node).
func (p *deliveryProbe) count(node, action, id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if node != "" {
		return p.runs[node+"|"+action+"|"+id]
	}
	return p.runs["a|"+action+"|"+id] + p.runs["b|"+action+"|"+id]
}

func (p *deliveryProbe) successes(action, id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.oks[action+"|"+id]
}

func (p *deliveryProbe) succeededAt(action, id string) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	at, ok := p.okAt[action+"|"+id]
	return at, ok
}

// deliveryNode is one running router.
type deliveryNode struct {
	r       *router.Router
	backend *topologies.Backend
	logs    *testenv.LogBuffer
}

// deliveryStore is one store setup: its config lines for a test.
type deliveryStore struct {
	name   string
	config func(t *testing.T) string
}

var deliveryStores = []deliveryStore{
	{"memory", func(*testing.T) string {
		return "[dedup]\nstore = \"memory\"\n[cache]\nstore = \"memory\"\n"
	}},
	{"redis", deliveryRedis},
	{"postgres", deliveryPostgres},
}

func deliveryRedis(t *testing.T) string {
	_, prefix := testenv.Redis(t)
	return fmt.Sprintf("[redis]\nurl = %q\nkey_prefix = %q\n[dedup]\nstore = \"redis\"\n[cache]\nstore = \"redis\"\n", testenv.RedisURL(), prefix)
}

func deliveryPostgres(t *testing.T) string {
	_, schema := testenv.Postgres(t)
	return fmt.Sprintf("[postgres]\nurl = %q\n[dedup]\nstore = \"postgres\"\n[cache]\nstore = \"postgres\"\n", testenv.PostgresSchemaURL(t, schema))
}

// startDelivery runs a router named node ("a" or "b") with the given
// config (observers and stores) and stops it when the test ends.
func startDelivery(t *testing.T, p *deliveryProbe, node, cfgText string) *deliveryNode {
	t.Helper()
	return startDeliveryWith(t, p.registry(node), node, cfgText)
}

// startDeliveryWith is startDelivery with the action registry reg.
func startDeliveryWith(t *testing.T, reg *handlers.Registry, node, cfgText string) *deliveryNode {
	t.Helper()
	return startDeliveryEmbedded(t, reg, node, "", cfgText)
}

// startDeliveryEmbedded is startDeliveryWith with more keys of the
// [embedded] table (embedded, TOML lines).
func startDeliveryEmbedded(t *testing.T, reg *handlers.Registry, node, embeddedKeys, cfgText string) *deliveryNode {
	t.Helper()
	n := &deliveryNode{logs: &testenv.LogBuffer{}}
	topo := topologies.NewRegistry()
	spy := embedded.Topology()
	spy.Build = func(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*topologies.Backend, error) {
		b, err := embedded.Build(ctx, cfg, logger)
		n.backend = b
		return b, err
	}
	if err := topo.Register(spy); err != nil {
		t.Fatal(err)
	}
	full := fmt.Sprintf("http = { addr = \"127.0.0.1:0\" }\n[embedded]\ndata_dir = %q\n%s[router]\nshutdown_timeout = \"5s\"\n%s",
		t.TempDir(), embeddedKeys, cfgText)
	cfg, err := config.Parse([]byte(full), nil)
	if err != nil {
		t.Fatalf("config: %v\n%s", err, full)
	}
	ready := make(chan string, 1)
	logger := slog.New(slog.NewTextHandler(n.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r, err := router.New(cfg, router.Options{Actions: reg, Topologies: topo, Logger: logger, Ready: ready})
	if err != nil {
		t.Fatal(err)
	}
	n.r = r
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("router %s: %v", node, err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("router %s did not start within 30s", node)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("router %s: Run: %v", node, err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("router %s did not stop within 60s", node)
		}
		if t.Failed() {
			t.Logf("router %s log:\n%s", node, lastLines(n.logs.String(), 200))
		}
	})
	return n
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// deliveryEvent returns a new INSERT event of an Order.
func deliveryEvent(entityID string) *event.Event {
	return &event.Event{ID: uuid.NewString(), Type: event.Insert, Entity: "Order", EntityID: entityID,
		Data: map[string]any{"id": entityID}, Timestamp: time.Now().UTC()}
}

// publish puts copies of ev on n's bus, each as a distinct message (a
// new message UUID, so the bus does not drop it as a republication). key
// overrides the ordering key when not empty; md is extra metadata.
func (n *deliveryNode) publish(t *testing.T, ev *event.Event, copies int, key func(i int) string, md map[string]string) {
	t.Helper()
	payload, err := event.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	msgs := make([]*message.Message, copies)
	for i := range msgs {
		m := message.NewMessage(uuid.NewString(), payload)
		k := ev.Key()
		if key != nil {
			k = key(i)
		}
		m.Metadata.Set(bus.KeyMetadata, k)
		m.Metadata.Set(bus.SubjectMetadata, "_.Order.INSERT")
		for mk, mv := range md {
			m.Metadata.Set(mk, mv)
		}
		msgs[i] = m
	}
	if err := n.backend.Publisher.Publish("events", msgs...); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

// metric sums a metric over its series whose labels include match.
func (n *deliveryNode) metric(t *testing.T, name string, match map[string]string) float64 {
	t.Helper()
	mfs, err := n.r.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for k, v := range match {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == k && l.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// handled is the number of messages n acked after handling.
func (n *deliveryNode) handled(t *testing.T) int {
	return int(n.metric(t, "millrace_events_total", map[string]string{"result": "handled"}))
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const probeObserver = `
[observers.obs]
event = "INSERT"
entity = "Order"
on_failure = %q
retry = { max_attempts = %d, backoff = "exponential", initial = "50ms", max = "1s", jitter = 0.0 }
`

func probeAction(name, extra string) string {
	return fmt.Sprintf("[[observers.obs.actions]]\ntype = \"probe\"\nname = %q\n%s\n", name, extra)
}

// 1. The same event delivered five times, one after another, runs each
// action once.
func TestDuplicateDeliveriesRunOnce(t *testing.T) {
	t.Parallel()
	for _, st := range deliveryStores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			p := newDeliveryProbe()
			n := startDelivery(t, p, "a", st.config(t)+fmt.Sprintf(probeObserver, "dlq", 3)+probeAction("x", "")+probeAction("y", ""))
			ev := deliveryEvent("1")
			for range 5 {
				n.publish(t, ev, 1, nil, nil)
			}
			eventually(t, 30*time.Second, "5 deliveries handled", func() bool { return n.handled(t) == 5 })
			for _, a := range []string{"x", "y"} {
				if got := p.count("", a, ev.ID); got != 1 {
					t.Errorf("action %s ran %d times for 5 deliveries; want 1", a, got)
				}
			}
			if got := n.metric(t, "millrace_dedup_hits_total", nil); got != 4 {
				t.Errorf("millrace_dedup_hits_total = %v; want 4", got)
			}
			if got := n.metric(t, "millrace_observer_runs_total", map[string]string{"result": "duplicate_skipped"}); got != 4 {
				t.Errorf("duplicate_skipped = %v; want 4", got)
			}
		})
	}
}

// 1b. Five copies delivered at once (distinct message UUIDs, released in
// parallel) run each action once.
func TestConcurrentDuplicateDeliveriesRunOnce(t *testing.T) {
	t.Parallel()
	for _, st := range deliveryStores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			p := newDeliveryProbe()
			var node atomic.Pointer[deliveryNode]
			// The first execution holds on until another copy found the
			// event in flight, so the copies surely overlap.
			p.hook = func(ctx context.Context, _, _ string, _ *event.Event, runs int) error {
				if runs != 1 {
					return nil
				}
				deadline := time.Now().Add(10 * time.Second)
				for node.Load().metric(t, "millrace_dedup_waits_total", nil) < 1 && time.Now().Before(deadline) {
					if err := middleware.Sleep(ctx, 10*time.Millisecond); err != nil {
						return err
					}
				}
				return nil
			}
			n := startDelivery(t, p, "a", st.config(t)+fmt.Sprintf(probeObserver, "dlq", 3)+probeAction("x", "")+probeAction("y", ""))
			node.Store(n)
			ev := deliveryEvent("1")
			// Distinct ordering keys: the bus releases the copies in parallel.
			n.publish(t, ev, 5, func(i int) string { return fmt.Sprint("copy", i) }, nil)
			eventually(t, 30*time.Second, "5 copies handled", func() bool { return n.handled(t) == 5 })
			for _, a := range []string{"x", "y"} {
				if got := p.count("", a, ev.ID); got != 1 {
					t.Errorf("action %s ran %d times for 5 concurrent copies; want 1", a, got)
				}
			}
			waits := n.metric(t, "millrace_dedup_waits_total", nil)
			if waits < 1 {
				t.Errorf("millrace_dedup_waits_total = %v; the copies did not overlap", waits)
			}
			if got := n.metric(t, "millrace_dedup_hits_total", nil); got != 4 {
				t.Errorf("millrace_dedup_hits_total = %v; want 4", got)
			}
			t.Logf("%s: %v copies waited for the one in flight", st.name, waits)
		})
	}
}

// 2. An observer with 3 actions whose 2nd fails twice, transiently:
// actions 1 and 3 run once, action 2 three times.
func TestPartialFailureRetriesOnlyTheFailedAction(t *testing.T) {
	t.Parallel()
	for _, st := range deliveryStores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			p := newDeliveryProbe()
			n := startDelivery(t, p, "a", st.config(t)+fmt.Sprintf(probeObserver, "dlq", 3)+
				probeAction("first", "")+probeAction("second", "fail = 2")+probeAction("third", ""))
			ev := deliveryEvent("1")
			n.publish(t, ev, 1, nil, nil)
			eventually(t, 30*time.Second, "the event handled", func() bool { return n.handled(t) == 1 })
			for a, want := range map[string]int{"first": 1, "second": 3, "third": 1} {
				if got := p.count("", a, ev.ID); got != want {
					t.Errorf("action %s ran %d times; want %d", a, got, want)
				}
				if got := p.successes(a, ev.ID); got != 1 {
					t.Errorf("action %s succeeded %d times; want 1", a, got)
				}
			}
			// Two retry rounds, each skipping the two actions that succeeded.
			if got := n.metric(t, "millrace_cache_hits_total", nil); got != 4 {
				t.Errorf("millrace_cache_hits_total = %v; want 4", got)
			}
			if got := n.metric(t, "millrace_retries_total", nil); got != 2 {
				t.Errorf("millrace_retries_total = %v; want 2", got)
			}
			if got := n.metric(t, "millrace_observer_runs_total", map[string]string{"result": "succeeded"}); got != 1 {
				t.Errorf("observer succeeded %v times; want 1", got)
			}
		})
	}
}

// 2b. When the attempts run out, the observer is dead-lettered; replaying
// it (observer metadata, a new message) skips the actions that already
// succeeded, through the result cache.
func TestReplayAfterPartialFailureSkipsSucceededActions(t *testing.T) {
	t.Parallel()
	for _, st := range deliveryStores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			p := newDeliveryProbe()
			n := startDelivery(t, p, "a", st.config(t)+fmt.Sprintf(probeObserver, "dlq", 2)+
				probeAction("first", "")+probeAction("second", "fail = 2")+probeAction("third", ""))
			ev := deliveryEvent("1")
			n.publish(t, ev, 1, nil, nil)
			eventually(t, 30*time.Second, "the event handled", func() bool { return n.handled(t) == 1 })
			ctx := context.Background()
			dls, err := n.backend.DeadLetters.List(ctx, stores.DeadLetterFilter{Observer: "obs"})
			if err != nil {
				t.Fatal(err)
			}
			if len(dls) != 1 {
				t.Fatalf("%d dead letters; want 1", len(dls))
			}
			dl := dls[0]
			if dl.EventID != ev.ID || dl.Action != "obs/1:probe" || dl.Reason != stores.ReasonExhausted || dl.Attempts != 2 ||
				dl.FirstFailure.IsZero() || dl.LastFailure.Before(dl.FirstFailure) || !strings.Contains(dl.Error, "failure 2 of 2") {
				t.Errorf("dead letter = %+v", dl)
			}
			if decoded, err := event.Decode(dl.Payload); err != nil || decoded.ID != ev.ID {
				t.Errorf("dead letter payload does not decode to the event: %v", err)
			}
			// Replay: the first and third actions are cached, the second runs.
			n.publish(t, ev, 1, nil, map[string]string{bus.ObserverMetadata: "obs"})
			eventually(t, 30*time.Second, "the replay handled", func() bool { return n.handled(t) == 2 })
			for a, want := range map[string]int{"first": 1, "second": 3, "third": 1} {
				if got := p.count("", a, ev.ID); got != want {
					t.Errorf("action %s ran %d times; want %d", a, got, want)
				}
			}
			if got := p.successes("second", ev.ID); got != 1 {
				t.Errorf("second succeeded %d times after the replay; want 1", got)
			}
		})
	}
}

// 3. The first copy is in flight and fails while a duplicate arrives in
// another process sharing the store: the effect happens exactly once.
func TestInFlightDuplicateTakesEffectOnce(t *testing.T) {
	t.Parallel()
	for _, st := range deliveryStores[1:] { // stores that processes share
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			for _, tc := range []struct {
				name     string
				attempts int
			}{
				{"first copy gives up", 1},
				{"first copy retries", 3},
			} {
				t.Run(tc.name, func(t *testing.T) {
					storeCfg := st.config(t)
					p := newDeliveryProbe()
					var nodeB atomic.Pointer[deliveryNode]
					started := make(chan struct{})
					// Node a's first execution waits until node b found the
					// event in flight, then fails.
					p.hook = func(ctx context.Context, node, _ string, _ *event.Event, runs int) error {
						if node != "a" || runs != 1 {
							return nil
						}
						close(started)
						deadline := time.Now().Add(15 * time.Second)
						for nodeB.Load().metric(t, "millrace_dedup_waits_total", nil) < 1 && time.Now().Before(deadline) {
							if err := middleware.Sleep(ctx, 10*time.Millisecond); err != nil {
								return err
							}
						}
						return errors.New("first copy fails while the duplicate waits")
					}
					obs := fmt.Sprintf(probeObserver, "log", tc.attempts) + probeAction("effect", "")
					a := startDelivery(t, p, "a", storeCfg+obs)
					b := startDelivery(t, p, "b", storeCfg+obs)
					nodeB.Store(b)
					ev := deliveryEvent("1")
					a.publish(t, ev, 1, nil, nil)
					select {
					case <-started:
					case <-time.After(30 * time.Second):
						t.Fatal("node a did not start the event")
					}
					b.publish(t, ev, 1, nil, nil)
					eventually(t, 30*time.Second, "both copies handled", func() bool { return a.handled(t) == 1 && b.handled(t) == 1 })
					if got := b.metric(t, "millrace_dedup_waits_total", nil); got < 1 {
						t.Fatalf("node b did not find the event in flight (waits = %v)", got)
					}
					if got := p.successes("effect", ev.ID); got != 1 {
						t.Errorf("the effect happened %d times; want exactly 1", got)
					}
					ra, rb := p.count("a", "effect", ev.ID), p.count("b", "effect", ev.ID)
					t.Logf("executions: node a %d, node b %d", ra, rb)
					if tc.attempts == 1 {
						// a gave up and released: b ran it.
						if ra != 1 || rb != 1 {
							t.Errorf("executions a=%d b=%d; want 1 and 1", ra, rb)
						}
					} else {
						// a retried and committed: b skipped a duplicate.
						if ra != 2 || rb != 0 || b.metric(t, "millrace_dedup_hits_total", nil) != 1 {
							t.Errorf("executions a=%d b=%d, b dedup hits %v; want 2, 0, 1", ra, rb, b.metric(t, "millrace_dedup_hits_total", nil))
						}
					}
				})
			}
		})
	}
}

// 4. Redis stops mid-run: events keep flowing with nothing lost, the
// fail-open metric rises, and dedup works again once Redis is back.
func TestRedisDownFailsOpen(t *testing.T) {
	t.Parallel()
	srv := testenv.StartRedis(t)
	p := newDeliveryProbe()
	n := startDelivery(t, p, "a", fmt.Sprintf("[redis]\nurl = %q\n[dedup]\nstore = \"redis\"\n[cache]\nstore = \"redis\"\n", srv.URL())+
		fmt.Sprintf(probeObserver, "dlq", 3)+probeAction("x", ""))
	var all []*event.Event
	phase := func(name string, count int) {
		t.Helper()
		before := n.handled(t)
		for i := range count {
			ev := deliveryEvent(fmt.Sprintf("%s-%d", name, i))
			all = append(all, ev)
			n.publish(t, ev, 1, nil, nil)
		}
		eventually(t, 60*time.Second, name+": events handled", func() bool { return n.handled(t) == before+count })
	}
	phase("up", 10)
	if got := n.metric(t, "millrace_dedup_errors_total", nil); got != 0 {
		t.Fatalf("dedup errors with Redis up = %v", got)
	}
	start := time.Now()
	srv.Stop()
	phase("down", 20)
	downErrs := n.metric(t, "millrace_dedup_errors_total", nil)
	if downErrs < 20 {
		t.Errorf("millrace_dedup_errors_total = %v after 20 events with Redis down; want at least 20", downErrs)
	}
	if got := n.metric(t, "millrace_cache_errors_total", nil); got < 20 {
		t.Errorf("millrace_cache_errors_total = %v; want at least 20", got)
	}
	srv.Start()
	phase("back", 10)
	// After repeated dial failures go-redis redials in the background,
	// about once a second, and fails fast meanwhile: events keep running
	// fail open until it reconnects. Wait until one runs without a store
	// error.
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		errs := n.metric(t, "millrace_dedup_errors_total", nil)
		phase(fmt.Sprint("recovered-", i), 1)
		if n.metric(t, "millrace_dedup_errors_total", nil) == errs {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the dedup store still fails 30s after Redis came back")
		}
		time.Sleep(100 * time.Millisecond)
	}
	elapsed := time.Since(start)

	for _, ev := range all {
		if got := p.count("", "x", ev.ID); got != 1 {
			t.Errorf("event %s (%s) ran %d times; want 1", ev.ID, ev.EntityID, got)
		}
	}
	warnings := strings.Count(n.logs.String(), "dedup store failing")
	if maxWarn := 1 + int(elapsed/(10*time.Second)); warnings < 1 || warnings > maxWarn {
		t.Errorf("%d fail-open warnings in %v; want between 1 and %d (one per 10s)", warnings, elapsed.Round(time.Millisecond), maxWarn)
	}
	// Dedup is back: a duplicate of an event handled since the restart is skipped.
	hits := n.metric(t, "millrace_dedup_hits_total", nil)
	last := all[len(all)-1]
	n.publish(t, last, 1, nil, nil)
	eventually(t, 30*time.Second, "the duplicate handled", func() bool { return n.handled(t) == len(all)+1 })
	if got := p.count("", "x", last.ID); got != 1 {
		t.Errorf("a duplicate after Redis came back ran again (%d runs)", got)
	}
	if got := n.metric(t, "millrace_dedup_hits_total", nil); got != hits+1 {
		t.Errorf("dedup hits %v → %v; want one more", hits, got)
	}
	t.Logf("Redis down for phase \"down\": %v dedup errors, %d warnings logged over %v", downErrs, warnings, elapsed.Round(time.Millisecond))
}

// 6. An entity whose action fails transiently and backs off for about 2s
// does not delay the events of other entities.
func TestSlowEntityDoesNotDelayOthers(t *testing.T) {
	// Not parallel with the other tests of this package: it measures
	// latency on a shared 2-core machine.
	for _, st := range deliveryStores {
		t.Run(st.name, func(t *testing.T) {
			p := newDeliveryProbe()
			n := startDelivery(t, p, "a", st.config(t)+`
[observers.obs]
event = "INSERT"
entity = "Order"
retry = { max_attempts = 5, backoff = "fixed", initial = "500ms", max = "1s", jitter = 0.0 }
`+probeAction("x", "fail = 4\nfail_entity = \"slow\""))
			slow := deliveryEvent("slow")
			slowStart := time.Now()
			n.publish(t, slow, 1, nil, nil)
			eventually(t, 30*time.Second, "the slow entity's first failure", func() bool { return p.count("", "x", slow.ID) >= 1 })

			const others = 50
			evs := make([]*event.Event, others)
			published := make([]time.Time, others)
			for i := range evs {
				evs[i] = deliveryEvent(fmt.Sprint("fast-", i))
				published[i] = time.Now()
				n.publish(t, evs[i], 1, nil, nil)
				time.Sleep(20 * time.Millisecond)
			}
			eventually(t, 60*time.Second, "all events handled", func() bool { return n.handled(t) == others+1 })
			slowDone, ok := p.succeededAt("x", slow.ID)
			if !ok {
				t.Fatal("the slow entity's event never succeeded")
			}
			if got := p.count("", "x", slow.ID); got != 5 {
				t.Errorf("the slow entity's action ran %d times; want 5 (4 failures, then success)", got)
			}
			lat := make([]time.Duration, others)
			during := 0
			for i, ev := range evs {
				at, ok := p.succeededAt("x", ev.ID)
				if !ok {
					t.Fatalf("event %d never succeeded", i)
				}
				lat[i] = at.Sub(published[i])
				if at.Before(slowDone) {
					during++
				}
			}
			sorted := slices.Clone(lat)
			sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
			pct := func(q float64) time.Duration {
				return sorted[int(math.Ceil(q*float64(len(sorted))))-1]
			}
			t.Logf("%s: slow entity took %v (5 runs); %d of %d other events finished meanwhile; their latency p50 %v, p95 %v, max %v",
				st.name, slowDone.Sub(slowStart).Round(time.Millisecond), during, others,
				pct(0.50).Round(100*time.Microsecond), pct(0.95).Round(100*time.Microsecond), sorted[len(sorted)-1].Round(100*time.Microsecond))
			if during < others*8/10 {
				t.Errorf("only %d of %d other events finished while the slow entity backed off; the test did not overlap them", during, others)
			}
			if p95 := pct(0.95); p95 >= 100*time.Millisecond {
				t.Errorf("p95 latency of other entities' events = %v while one entity backs off; want under 100ms (all: %v)", p95, lat)
			}
		})
	}
}

// A message that is not an event is dead-lettered with its raw bytes,
// and the router keeps consuming.
func TestUndecodableMessageIsDeadLettered(t *testing.T) {
	t.Parallel()
	p := newDeliveryProbe()
	n := startDelivery(t, p, "a", fmt.Sprintf(probeObserver, "dlq", 3)+probeAction("x", ""))
	raw := []byte("{not json")
	ev := deliveryEvent("1")
	// Under the key of the event that follows: that one runs only once
	// the bad message was settled.
	m := message.NewMessage(uuid.NewString(), raw)
	m.Metadata.Set(bus.KeyMetadata, ev.Key())
	m.Metadata.Set(bus.SubjectMetadata, "_.Order.INSERT") // the bus consumes "<topic>.>"
	if err := n.backend.Publisher.Publish("events", m); err != nil {
		t.Fatal(err)
	}
	n.publish(t, ev, 1, nil, nil)
	eventually(t, 30*time.Second, "the next event handled", func() bool { return p.successes("x", ev.ID) == 1 })
	dls, err := n.backend.DeadLetters.List(context.Background(), stores.DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 || dls[0].Reason != stores.ReasonUndecodable || !bytes.Equal(dls[0].Payload, raw) || dls[0].Topic != "events" {
		t.Fatalf("dead letters = %+v; want one undecodable entry with the raw bytes", dls)
	}
	if got := n.metric(t, "millrace_events_total", map[string]string{"result": "undecodable"}); got != 1 {
		t.Errorf("undecodable events = %v; want 1", got)
	}
}

// A permanent error is not retried, and each failure policy settles the
// message.
func TestFailurePolicies(t *testing.T) {
	t.Parallel()
	for _, policy := range []string{"dlq", "log", "drop"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			p := newDeliveryProbe()
			n := startDelivery(t, p, "a", fmt.Sprintf(probeObserver, policy, 5)+probeAction("x", "fail = 10\npermanent = true"))
			ev := deliveryEvent("1")
			n.publish(t, ev, 1, nil, nil)
			eventually(t, 30*time.Second, "the event settled", func() bool { return n.handled(t) == 1 })
			if got := p.count("", "x", ev.ID); got != 1 {
				t.Errorf("a permanently failing action ran %d times; want 1", got)
			}
			dls, err := n.backend.DeadLetters.List(context.Background(), stores.DeadLetterFilter{})
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]int{"dlq": 1}[policy]
			if len(dls) != want {
				t.Fatalf("%d dead letters with on_failure = %s; want %d", len(dls), policy, want)
			}
			if want == 1 && (dls[0].Reason != stores.ReasonPermanent || dls[0].Attempts != 1) {
				t.Errorf("dead letter = %+v; want reason permanent, 1 attempt", dls[0])
			}
			result := map[string]string{"dlq": "dead_lettered", "log": "logged", "drop": "dropped"}[policy]
			if got := n.metric(t, "millrace_observer_runs_total", map[string]string{"result": result}); got != 1 {
				t.Errorf("observer result %s = %v; want 1", result, got)
			}
		})
	}
}

// A condition that fails to evaluate is dead-lettered with reason
// "condition".
func TestConditionErrorIsDeadLettered(t *testing.T) {
	t.Parallel()
	p := newDeliveryProbe()
	n := startDelivery(t, p, "a", `
[observers.obs]
event = "INSERT"
entity = "Order"
condition = "data.id / 0 > 1"
`+probeAction("x", ""))
	ev := deliveryEvent("1")
	n.publish(t, ev, 1, nil, nil)
	eventually(t, 30*time.Second, "the event settled", func() bool { return n.handled(t) == 1 })
	dls, err := n.backend.DeadLetters.List(context.Background(), stores.DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 || dls[0].Reason != stores.ReasonCondition || dls[0].Observer != "obs" {
		t.Fatalf("dead letters = %+v; want one with reason condition", dls)
	}
	if p.count("", "x", ev.ID) != 0 {
		t.Error("the action ran although the condition failed")
	}
}

// An open circuit breaker holds events back without using attempts or
// dead-lettering them; the gauge shows it.
func TestOpenBreakerWaitsInsteadOfDeadLettering(t *testing.T) {
	t.Parallel()
	p := newDeliveryProbe()
	// Max attempts 6: the breaker opens after 5 consecutive failures, so
	// the 6th attempt waits until it lets a trial call through.
	n := startDelivery(t, p, "a", `
[observers.obs]
event = "INSERT"
entity = "Order"
retry = { max_attempts = 6, backoff = "fixed", initial = "20ms", max = "1s", jitter = 0.0 }
`+probeAction("x", "fail = 5"))
	ev := deliveryEvent("1")
	n.publish(t, ev, 1, nil, nil)
	eventually(t, 30*time.Second, "the breaker to open", func() bool {
		return n.metric(t, "millrace_breaker_state", map[string]string{"breaker": "obs/0:probe"}) == 2
	})
	eventually(t, 10*time.Second, "an execution refused by the open breaker", func() bool {
		return n.metric(t, "millrace_action_runs_total", map[string]string{"result": "breaker_open"}) >= 1
	})
	if n.handled(t) != 0 {
		t.Error("the event was settled while its breaker was open")
	}
	// The breaker stays open for 30s (the default); then the trial call
	// succeeds and the event is handled, not dead-lettered.
	eventually(t, 60*time.Second, "the event handled after the breaker closed", func() bool { return n.handled(t) == 1 })
	if got := p.successes("x", ev.ID); got != 1 {
		t.Errorf("successes = %d; want 1", got)
	}
	if got := p.count("", "x", ev.ID); got != 6 {
		t.Errorf("executions = %d; want 6 (refusals do not count)", got)
	}
	if dls, err := n.backend.DeadLetters.List(context.Background(), stores.DeadLetterFilter{}); err != nil || len(dls) != 0 {
		t.Errorf("dead letters = %v, %v; want none", dls, err)
	}
	if got := n.metric(t, "millrace_breaker_state", map[string]string{"breaker": "obs/0:probe"}); got != 0 {
		t.Errorf("breaker state after the trial succeeded = %v; want 0", got)
	}
}
