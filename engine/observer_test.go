package engine_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/engine"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/internal/samples"
)

// observerOf builds an observer whose actions are fns, named after
// kinds[i] (or "probe").
func observerOf(concurrency int, timeout time.Duration, fns ...handlers.ActionFunc) *engine.Observer {
	o := &engine.Observer{
		Name: "obs", Event: "*", Entity: "*",
		Config: config.Observer{Concurrency: concurrency, Timeout: config.Duration(timeout)},
	}
	for i, fn := range fns {
		o.Actions = append(o.Actions, &engine.Bound{Index: i, Spec: &handlers.Spec{Type: "probe"}, Action: fn})
	}
	return o
}

// sleeper sleeps d unless ctx ends first, and records its start and end.
func sleeper(log *journal, i int, d time.Duration) handlers.ActionFunc {
	return func(ctx context.Context, _ *event.Event) error {
		log.add(fmt.Sprintf("start %d", i))
		defer log.add(fmt.Sprintf("end %d", i))
		select {
		case <-time.After(d):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

type journal struct {
	mu      sync.Mutex
	entries []string
}

func (j *journal) add(s string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = append(j.entries, s)
}

func (j *journal) list() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.entries)
}

var anEvent = &event.Event{ID: "7d3f1b2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b", Type: event.Update, Entity: "Order", EntityID: "1"}

func TestRunActionsConcurrently(t *testing.T) {
	t.Parallel()
	var log journal
	o := observerOf(3, 5*time.Second, sleeper(&log, 0, 100*time.Millisecond), sleeper(&log, 1, 100*time.Millisecond), sleeper(&log, 2, 100*time.Millisecond))
	start := time.Now()
	if err := o.Run(context.Background(), anEvent, nil); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if d := time.Since(start); d >= 250*time.Millisecond {
		t.Errorf("three 100 ms actions with concurrency 3 took %v; want < 250ms", d)
	}
	// All three started before any ended.
	if got := log.list(); len(got) != 6 || strings.HasPrefix(got[0], "end") || strings.HasPrefix(got[1], "end") || strings.HasPrefix(got[2], "end") {
		t.Errorf("journal = %v; want three starts before the ends", got)
	}
}

func TestRunSequentialWithConcurrencyOne(t *testing.T) {
	t.Parallel()
	for _, limit := range []int{1, 0} { // 0 (unset) behaves as 1
		var log journal
		o := observerOf(limit, 5*time.Second, sleeper(&log, 0, 100*time.Millisecond), sleeper(&log, 1, 100*time.Millisecond), sleeper(&log, 2, 100*time.Millisecond))
		start := time.Now()
		if err := o.Run(context.Background(), anEvent, nil); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Errorf("concurrency %d: three 100 ms actions took %v; want ≥ 300ms", limit, d)
		}
		want := []string{"start 0", "end 0", "start 1", "end 1", "start 2", "end 2"}
		if got := log.list(); !slices.Equal(got, want) {
			t.Errorf("concurrency %d: journal = %v; want %v", limit, got, want)
		}
	}
}

func TestRunRespectsConcurrencyLimit(t *testing.T) {
	t.Parallel()
	var inFlight, peak atomic.Int32
	fn := func(ctx context.Context, _ *event.Event) error {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
		return nil
	}
	o := observerOf(2, 5*time.Second, fn, fn, fn, fn, fn, fn)
	if err := o.Run(context.Background(), anEvent, nil); err != nil {
		t.Fatal(err)
	}
	if p := peak.Load(); p != 2 {
		t.Errorf("peak actions in flight = %d; want 2", p)
	}
}

func TestRunTimeoutPerAction(t *testing.T) {
	t.Parallel()
	var log journal
	var ok atomic.Int32
	quick := func(context.Context, *event.Event) error { ok.Add(1); return nil }
	for _, limit := range []int{1, 3} {
		ok.Store(0)
		o := observerOf(limit, 100*time.Millisecond, quick, sleeper(&log, 1, 10*time.Second), quick)
		start := time.Now()
		err := o.Run(context.Background(), anEvent, nil)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("concurrency %d: Run took %v; the timeout did not stop the slow action", limit, d)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("concurrency %d: Run = %v; want a deadline error", limit, err)
		}
		if !strings.HasPrefix(err.Error(), "action obs/1:probe: ") || strings.Contains(err.Error(), "obs/0") || strings.Contains(err.Error(), "obs/2") {
			t.Errorf("concurrency %d: Run = %q; want only action obs/1:probe named", limit, err)
		}
		if ok.Load() != 2 {
			t.Errorf("concurrency %d: %d quick actions succeeded; want 2", limit, ok.Load())
		}
	}

	// The timeout is per action, not for the whole observer: three 100 ms
	// actions in a row all finish under a 250 ms timeout.
	seq := observerOf(1, 250*time.Millisecond, sleeper(&log, 0, 100*time.Millisecond), sleeper(&log, 1, 100*time.Millisecond), sleeper(&log, 2, 100*time.Millisecond))
	if err := seq.Run(context.Background(), anEvent, nil); err != nil {
		t.Errorf("Run of three 100 ms actions under a 250 ms per-action timeout: %v", err)
	}
}

func TestRunErrorsNameActionsAndDoNotStopOthers(t *testing.T) {
	t.Parallel()
	for _, limit := range []int{1, 3} {
		var ran atomic.Int32
		o := observerOf(limit, time.Second,
			func(context.Context, *event.Event) error {
				ran.Add(1)
				return handlers.Permanent(errors.New("bad request"))
			},
			func(context.Context, *event.Event) error { ran.Add(1); return errors.New("connection refused") },
			func(context.Context, *event.Event) error { ran.Add(1); return nil },
		)
		err := o.Run(context.Background(), anEvent, nil)
		if ran.Load() != 3 {
			t.Errorf("concurrency %d: %d actions ran; want 3", limit, ran.Load())
		}
		want := "action obs/0:probe: bad request\naction obs/1:probe: connection refused"
		if err == nil || err.Error() != want {
			t.Errorf("concurrency %d: Run = %q; want %q", limit, err, want)
		}
		if !handlers.IsPermanent(err) {
			t.Errorf("concurrency %d: the permanent failure is lost in %v", limit, err)
		}
	}
}

func TestRunPanicBecomesPermanentError(t *testing.T) {
	t.Parallel()
	for _, limit := range []int{1, 2} {
		var ran atomic.Int32
		o := observerOf(limit, time.Second,
			func(context.Context, *event.Event) error { panic("nil map write") },
			func(context.Context, *event.Event) error { ran.Add(1); return nil },
		)
		err := o.Run(context.Background(), anEvent, nil)
		if err == nil || err.Error() != "action obs/0:probe: panic: nil map write" || !handlers.IsPermanent(err) {
			t.Errorf("concurrency %d: Run = %v; want a permanent panic error naming the action", limit, err)
		}
		if ran.Load() != 1 {
			t.Errorf("concurrency %d: the action after the panic did not run", limit)
		}
	}
}

func TestRunWithoutTimeout(t *testing.T) {
	t.Parallel()
	o := observerOf(1, 0, func(ctx context.Context, _ *event.Event) error {
		if d, ok := ctx.Deadline(); ok {
			return fmt.Errorf("deadline %v with a zero timeout", d)
		}
		return nil
	})
	if err := o.Run(context.Background(), anEvent, nil); err != nil {
		t.Error(err)
	}
}

func TestRunThroughExec(t *testing.T) {
	t.Parallel()
	var direct atomic.Int32
	o := observerOf(2, time.Second,
		func(context.Context, *event.Event) error { direct.Add(1); return nil },
		func(context.Context, *event.Event) error { direct.Add(1); return nil },
	)
	var seen sync.Map
	err := o.Run(context.Background(), anEvent, func(ctx context.Context, ev *event.Event, b *engine.Bound) error {
		if _, ok := ctx.Deadline(); !ok {
			return errors.New("exec got no deadline")
		}
		seen.Store(b.Index, ev.ID)
		if b.Index == 1 {
			return errors.New("served from cache") // exec decides; the action is not called
		}
		return engine.Direct(ctx, ev, b)
	})
	if err == nil || err.Error() != "action obs/1:probe: served from cache" {
		t.Errorf("Run = %v", err)
	}
	if direct.Load() != 1 {
		t.Errorf("%d actions called; want 1", direct.Load())
	}
	for i := range 2 {
		if id, ok := seen.Load(i); !ok || id != anEvent.ID {
			t.Errorf("exec not called for action %d", i)
		}
	}
}

func obs(name, ev, entity string) *engine.Observer {
	return &engine.Observer{Name: name, Event: ev, Entity: entity}
}

func names(obs []*engine.Observer) []string {
	out := make([]string, len(obs))
	for i, o := range obs {
		out[i] = o.Name
	}
	return out
}

func TestMatcher(t *testing.T) {
	all := []*engine.Observer{
		obs("any_any", "*", "*"),
		obs("upd_order", "UPDATE", "Order"),
		obs("upd_any", "UPDATE", "*"),
		obs("any_order", "*", "Order"),
		obs("ins_customer", "INSERT", "Customer"),
		obs("upd_order_2", "UPDATE", "Order"),
	}
	m := engine.NewMatcher(all)
	for _, c := range []struct {
		typ    event.Type
		entity string
		want   []string
	}{
		// Exact entity first, then "*", each in the order given.
		{event.Update, "Order", []string{"upd_order", "any_order", "upd_order_2", "any_any", "upd_any"}},
		{event.Insert, "Order", []string{"any_order", "any_any"}},
		{event.Delete, "Order", []string{"any_order", "any_any"}},
		{event.Custom, "Order", []string{"any_order", "any_any"}},
		{event.Insert, "Customer", []string{"ins_customer", "any_any"}},
		{event.Update, "Customer", []string{"any_any", "upd_any"}},
		{event.Delete, "Invoice", []string{"any_any"}},
		// Entities are case-sensitive.
		{event.Update, "order", []string{"any_any", "upd_any"}},
	} {
		ev := &event.Event{Type: c.typ, Entity: c.entity}
		if got := names(m.Match(ev)); !slices.Equal(got, c.want) {
			t.Errorf("Match(%s %s) = %v; want %v", c.typ, c.entity, got, c.want)
		}
	}

	// No match at all.
	narrow := engine.NewMatcher([]*engine.Observer{obs("upd_order", "UPDATE", "Order"), obs("ins_any", "INSERT", "*")})
	for _, ev := range []*event.Event{{Type: event.Delete, Entity: "Order"}, {Type: event.Update, Entity: "Customer"}, {Type: "BOGUS", Entity: "Order"}} {
		if got := narrow.Match(ev); len(got) != 0 {
			t.Errorf("Match(%s %s) = %v; want none", ev.Type, ev.Entity, names(got))
		}
	}
	if got := engine.NewMatcher(nil).Match(anEvent); len(got) != 0 {
		t.Errorf("empty Matcher matched %v", names(got))
	}

	// Match agrees with Observer.Matches on every combination.
	for _, typ := range event.Types {
		for _, entity := range []string{"Order", "Customer", "Invoice", "*"} {
			ev := &event.Event{Type: typ, Entity: entity}
			var want []string
			for _, o := range all {
				if o.Matches(ev) {
					want = append(want, o.Name)
				}
			}
			got := names(m.Match(ev))
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("%s %s: Match = %v; Matches says %v", typ, entity, got, want)
			}
		}
	}
}

func TestCompileObservers(t *testing.T) {
	cfg, err := config.Parse([]byte(`
[observers.b_shipped]
event = "update"
entity = "Order"
condition = "field_changed_to('status', 'shipped')"
concurrency = 2
timeout = "5s"
actions = [{ type = "probe", url = "http://a" }, { type = "probe", url = "http://b", method = "PUT" }]

[observers.a_everything]
actions = [{ type = "probe", url = "http://c" }]
`), nil)
	if err != nil {
		t.Fatalf("config.Parse: %v", err)
	}
	got, err := engine.Compile(context.Background(), cfg, probeRegistry(t), handlers.Deps{})
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	defer engine.CloseAll(got)
	if len(got) != 2 || got[0].Name != "a_everything" || got[1].Name != "b_shipped" {
		t.Fatalf("Compile = %v; want a_everything, b_shipped", names(got))
	}
	o := got[1]
	if o.Event != "UPDATE" || o.Entity != "Order" || o.Condition == nil || len(o.Actions) != 2 {
		t.Errorf("observer = %+v", o)
	}
	if id := o.Actions[1].ID(o.Name); id != "b_shipped/1:probe" {
		t.Errorf("ID = %s", id)
	}
	if o.Actions[0].Spec.Hash == o.Actions[1].Spec.Hash {
		t.Error("two different actions share a hash")
	}
	ev := &event.Event{Type: event.Update, Entity: "Order", Changes: map[string]event.Change{"status": {Old: "paid", New: "shipped"}}}
	if got := names(engine.NewMatcher(got).Match(ev)); !slices.Equal(got, []string{"b_shipped", "a_everything"}) {
		t.Errorf("Match = %v", got)
	}
	if ok, err := o.Accepts(ev); !ok || err != nil {
		t.Errorf("Accepts = %v, %v", ok, err)
	}
}

func BenchmarkMatch1000Observers(b *testing.B) {
	// 1,000 observers: 200 entities × 4 event types, plus 200 on "*"
	// (event, entity or both), each with a condition.
	var all []*engine.Observer
	cond, err := engine.CompileCondition(`data.status == 'shipped' && field_changed('status')`)
	if err != nil {
		b.Fatal(err)
	}
	for i := range 200 {
		for _, typ := range event.Types {
			all = append(all, &engine.Observer{Name: fmt.Sprintf("o%d_%s", i, typ), Event: string(typ), Entity: fmt.Sprintf("Entity%d", i), Condition: cond})
		}
	}
	for i := range 200 {
		ev, entity := "*", fmt.Sprintf("Entity%d", i)
		switch i % 4 {
		case 1:
			ev, entity = "UPDATE", "*"
		case 2:
			ev, entity = "*", "*"
		}
		all = append(all, &engine.Observer{Name: fmt.Sprintf("w%d", i), Event: ev, Entity: entity, Condition: cond})
	}
	if len(all) != 1000 {
		b.Fatalf("%d observers", len(all))
	}
	m := engine.NewMatcher(all)
	ev := samples.Event(b, strings.Replace(samples.OrderUpdate, `"Order"`, `"Entity42"`, 1))
	matched := m.Match(ev)
	if len(matched) < 2 {
		b.Fatalf("matched %d", len(matched))
	}
	b.Run("match", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if len(m.Match(ev)) != len(matched) {
				b.Fatal("match changed")
			}
		}
	})
	b.Run("match_and_conditions", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, o := range m.Match(ev) {
				if ok, err := o.Accepts(ev); !ok || err != nil {
					b.Fatalf("Accepts = %v, %v", ok, err)
				}
			}
		}
	})
	b.Run("linear_scan_for_comparison", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			n := 0
			for _, o := range all {
				if o.Matches(ev) {
					n++
				}
			}
			if n != len(matched) {
				b.Fatal("scan disagrees")
			}
		}
	})
}
