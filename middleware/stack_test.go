package middleware_test

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/engine"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/middleware"
	"github.com/millrace/millrace/stores"
)

func layerNames(ls []middleware.Layer) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.Name
	}
	return out
}

// TestPlanFollowsConfig: the stack has a condition layer only for an
// observer with a condition and a ledger only when dedup or the result
// cache is on; the failure policy is outermost and the actions inside.
func TestPlanFollowsConfig(t *testing.T) {
	o := config.Observer{}
	o.SetDefaults()
	o.Actions = []config.Action{{"type": "log"}}
	cfg := config.Default()
	want := []string{middleware.LayerFailure, middleware.LayerLedger, middleware.LayerRetry, middleware.LayerActions}
	if got := layerNames(middleware.Plan(cfg, o)); !equal(got, want) {
		t.Errorf("default plan = %v; want %v", got, want)
	}
	o.Condition = "data.n > 1"
	want = []string{middleware.LayerFailure, middleware.LayerCondition, middleware.LayerLedger, middleware.LayerRetry, middleware.LayerActions}
	if got := layerNames(middleware.Plan(cfg, o)); !equal(got, want) {
		t.Errorf("plan with a condition = %v; want %v", got, want)
	}
	cfg.Dedup.Enabled = false
	if got := middleware.Plan(cfg, o)[2].Detail; got != "result cache lookup (the topology's store)" {
		t.Errorf("ledger with dedup off: %q", got)
	}
	cfg.Cache.Enabled = false
	want = []string{middleware.LayerFailure, middleware.LayerCondition, middleware.LayerRetry, middleware.LayerActions}
	if got := layerNames(middleware.Plan(cfg, o)); !equal(got, want) {
		t.Errorf("plan with dedup and cache off = %v; want %v", got, want)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

type noConfig struct{}

func (noConfig) Validate() error { return nil }

// stackRig compiles the observers of toml with three action types —
// "flaky" fails its first call transiently, "broken" always fails
// permanently, "ok" succeeds — and returns a Policy over a memory
// ledger and Redis dead letters.
func stackRig(t *testing.T, toml string) (*middleware.Policy, map[string]*engine.Observer, *stores.RedisDeadLetters, map[string]*atomic.Int32) {
	t.Helper()
	calls := map[string]*atomic.Int32{"flaky": {}, "broken": {}, "ok": {}}
	reg := handlers.NewRegistry()
	handlers.MustRegister(reg, "flaky", func(context.Context, noConfig, handlers.Deps) (handlers.Action, error) {
		return handlers.ActionFunc(func(context.Context, *event.Event) error {
			if calls["flaky"].Add(1) == 1 {
				return errors.New("connection reset")
			}
			return nil
		}), nil
	})
	handlers.MustRegister(reg, "broken", func(context.Context, noConfig, handlers.Deps) (handlers.Action, error) {
		return handlers.ActionFunc(func(context.Context, *event.Event) error {
			calls["broken"].Add(1)
			return handlers.Permanent(errors.New("400 bad request"))
		}), nil
	})
	handlers.MustRegister(reg, "ok", func(context.Context, noConfig, handlers.Deps) (handlers.Action, error) {
		return handlers.ActionFunc(func(context.Context, *event.Event) error { calls["ok"].Add(1); return nil }), nil
	})
	cfg, err := config.Parse([]byte(toml), nil)
	if err != nil {
		t.Fatal(err)
	}
	obs, err := engine.Compile(context.Background(), cfg, reg, handlers.Deps{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*engine.Observer{}
	for _, o := range obs {
		byName[o.Name] = o
	}
	store, err := stores.NewMemoryStore(stores.MemoryStoreConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	client, prefix := testenv.Redis(t)
	dlq, err := stores.NewRedisDeadLetters(client, stores.RedisDeadLettersConfig{Key: prefix + "dlq"})
	if err != nil {
		t.Fatal(err)
	}
	metrics := middleware.NewMetrics()
	return &middleware.Policy{
		Config: cfg, DeadLetters: dlq, Metrics: metrics, Logger: slog.New(slog.DiscardHandler),
		Ledger:   middleware.NewLedger(store, store, middleware.LedgerConfig{}, metrics, nil),
		Breakers: middleware.NewBreakers(middleware.BreakerConfig{}, middleware.BreakerFailure),
	}, byName, dlq, calls
}

func deliver(p *middleware.Policy, o *engine.Observer, ev *event.Event) (*middleware.Delivery, error) {
	payload, _ := event.Encode(ev)
	msg := message.NewMessage(ev.ID, payload)
	d := &middleware.Delivery{Event: ev, Observer: o, Payload: payload, Topic: "events",
		Actions: make([]middleware.ActionState, len(o.Actions))}
	return d, middleware.Run(msg, d, p.Stack(o))
}

// TestStack runs observers through their stacks: a transient failure is
// retried and the action that succeeded is not run again; a second
// delivery of the event is a duplicate; a permanent failure and a
// condition that fails to evaluate are dead-lettered with their reason;
// a condition that refuses the event skips it.
func TestStack(t *testing.T) {
	p, obs, dlq, calls := stackRig(t, `
[observers.retried]
retry = { max_attempts = 3, backoff = "fixed", initial = "1ms", max = "1ms" }
actions = [{ type = "ok" }, { type = "flaky" }]
[observers.failing]
actions = [{ type = "broken" }]
[observers.picky]
condition = "data.n > 1"
actions = [{ type = "ok" }]
[observers.erring]
condition = "data.missing.deeper > 1"
actions = [{ type = "ok" }]
`)
	ctx := context.Background()
	ev := &event.Event{ID: uuid.NewString(), Type: event.Insert, Entity: "Order", EntityID: "1",
		Data: map[string]any{"n": 1}, Timestamp: time.Now()}

	d, err := deliver(p, obs["retried"], ev)
	if err != nil || d.Outcome != middleware.OutcomeSucceeded || d.Retries != 1 || d.ActionsRun() != 3 {
		t.Errorf("retried: outcome %q err %v retries %d actions run %d; want succeeded, 1 retry, 3 runs",
			d.Outcome, err, d.Retries, d.ActionsRun())
	}
	if n := calls["ok"].Load(); n != 1 {
		t.Errorf("the action that succeeded ran %d times; want 1 (skipped on the retry)", n)
	}
	d, err = deliver(p, obs["retried"], ev)
	if err != nil || d.Outcome != middleware.OutcomeDuplicate || d.ActionsRun() != 0 {
		t.Errorf("second delivery: outcome %q err %v runs %d; want a duplicate that runs nothing", d.Outcome, err, d.ActionsRun())
	}

	d, err = deliver(p, obs["failing"], ev)
	if err != nil || d.Outcome != middleware.OutcomeDeadLettered || calls["broken"].Load() != 1 {
		t.Errorf("failing: outcome %q err %v calls %d; want dead-lettered after 1 call (permanent)", d.Outcome, err, calls["broken"].Load())
	}
	d, err = deliver(p, obs["picky"], ev)
	if err != nil || d.Outcome != middleware.OutcomeSkipped {
		t.Errorf("picky: outcome %q err %v; want skipped by the condition", d.Outcome, err)
	}
	d, err = deliver(p, obs["erring"], ev)
	if err != nil || d.Outcome != middleware.OutcomeDeadLettered {
		t.Errorf("erring: outcome %q err %v; want dead-lettered", d.Outcome, err)
	}
	dls, err := dlq.List(ctx, stores.DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]string{}
	for _, dl := range dls {
		reasons[dl.Observer] = dl.Reason
	}
	if reasons["failing"] != stores.ReasonPermanent || reasons["erring"] != stores.ReasonCondition || len(dls) != 2 {
		t.Errorf("dead letters by observer = %v; want failing: permanent, erring: condition", reasons)
	}
}

// TestStackParks: with on_failure = "park", a final failure parks the
// entity: its next event is added to the group without running, another
// entity and another observer still run, and an entry replayed from the
// group that fails again is handed back without a new entry.
func TestStackParks(t *testing.T) {
	p, obs, dlq, calls := stackRig(t, `
[observers.strict]
on_failure = "park"
actions = [{ type = "broken" }]
[observers.loose]
on_failure = "park"
actions = [{ type = "ok" }]
`)
	p.Parks = middleware.NewParks()
	ctx := context.Background()
	evOf := func(entityID string) *event.Event {
		return &event.Event{ID: uuid.NewString(), Type: event.Update, Source: "db", Entity: "Order", EntityID: entityID,
			Data: map[string]any{}, Timestamp: time.Now()}
	}
	key := stores.ParkKey("db", "Order", "1")
	if d, err := deliver(p, obs["strict"], evOf("1")); err != nil || d.Outcome != middleware.OutcomeParked {
		t.Fatalf("head: outcome %q err %v; want parked", d.Outcome, err)
	}
	if !p.Parks.Parked("strict", evOf("1")) || p.Parks.Parked("loose", evOf("1")) || p.Parks.Parked("strict", evOf("2")) {
		t.Fatal("the park must hold for (strict, entity 1) only")
	}
	next := evOf("1")
	if d, err := deliver(p, obs["strict"], next); err != nil || d.Outcome != middleware.OutcomeParked || calls["broken"].Load() != 1 {
		t.Errorf("next event: outcome %q err %v, action calls %d; want parked without running (1 call)", d.Outcome, err, calls["broken"].Load())
	}
	if d, err := deliver(p, obs["loose"], evOf("1")); err != nil || d.Outcome != middleware.OutcomeSucceeded {
		t.Errorf("another observer: outcome %q err %v; want succeeded", d.Outcome, err)
	}
	if d, _ := deliver(p, obs["strict"], evOf("2")); d.Outcome != middleware.OutcomeParked || calls["broken"].Load() != 2 {
		t.Errorf("another entity: outcome %q, calls %d; want it run (and parked on its own failure)", d.Outcome, calls["broken"].Load())
	}
	group, err := dlq.List(ctx, stores.DeadLetterFilter{Observer: "strict", Key: key, Parked: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(group) != 2 || group[0].Reason != stores.ReasonPermanent || group[1].Reason != stores.ReasonParked || group[1].EventID != next.ID {
		t.Fatalf("group = %+v; want the permanent head, then the parked event", group)
	}
	// A replay of the group's head that fails again: a *Failure, no entry.
	payload, _ := event.Encode(evOf("1"))
	d := &middleware.Delivery{Event: evOf("1"), Observer: obs["strict"], Payload: payload, ParkReplay: true,
		Actions: make([]middleware.ActionState, 1)}
	var f *middleware.Failure
	if err := middleware.Run(message.NewMessage(d.Event.ID, payload), d, p.Stack(obs["strict"])); !errors.As(err, &f) || d.Outcome != middleware.OutcomeParked {
		t.Errorf("replayed head failing again: outcome %q err %v; want parked with a *Failure", d.Outcome, err)
	}
	if n, _ := dlq.Count(ctx); n != 3 {
		t.Errorf("%d entries after the failed replay, want 3 (no new one)", n)
	}
}
