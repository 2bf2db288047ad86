package router

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/engine"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/middleware"
	"github.com/millrace/millrace/stores"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/embedded"
)

type benchNoop struct{}

func (benchNoop) Validate() error { return nil }

// BenchmarkObserve hands the bus handler one message at a time: decode
// the envelope (a row of about 450 bytes of text), match it against the
// observers, run the one that matches through its stack (memory ledger,
// dedup and cache on) into a no-op action, count it. No bus: what the
// router costs per event between the bus and the action.
func BenchmarkObserve(b *testing.B) {
	reg := handlers.NewRegistry()
	handlers.MustRegister(reg, "nop", func(context.Context, benchNoop, handlers.Deps) (handlers.Action, error) {
		return handlers.ActionFunc(func(context.Context, *event.Event) error { return nil }), nil
	})
	cfg, err := config.Parse([]byte(`
[observers.rows]
event = "INSERT"
entity = "BenchRow"
actions = [{ type = "nop" }]
[observers.orders]
entity = "Order"
actions = [{ type = "nop" }]
`), nil)
	if err != nil {
		b.Fatal(err)
	}
	store, err := stores.NewMemoryStore(stores.MemoryStoreConfig{})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	topos := topologies.NewRegistry()
	if err := embedded.Register(topos); err != nil {
		b.Fatal(err)
	}
	r, err := New(cfg, Options{Actions: reg, Topologies: topos, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	r.policy = &middleware.Policy{Config: cfg, Metrics: r.metrics.Delivery, Logger: r.logger,
		Ledger:   middleware.NewLedger(store, store, middleware.LedgerConfig{}, r.metrics.Delivery, nil),
		Breakers: middleware.NewBreakers(middleware.BreakerConfig{}, middleware.BreakerFailure)}
	if r.observers, err = engine.Compile(context.Background(), cfg, reg, handlers.Deps{Config: cfg}); err != nil {
		b.Fatal(err)
	}
	r.compile()
	// One envelope, its id rewritten per message: a new event each time,
	// so that dedup claims it, at little cost outside the router.
	const zero = "00000000-0000-0000-0000-000000000000"
	tmpl, err := event.Encode(&event.Event{ID: zero, Type: event.Insert, Entity: "BenchRow", EntityID: "12345",
		Data:      map[string]any{"id": int64(1), "n": int64(1), "payload": strings.Repeat("millrace turns database changes into actions. ", 10)},
		Timestamp: time.Now(), Seq: 1, Source: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	at := bytes.Index(tmpl, []byte(zero))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p := bytes.Clone(tmpl)
		copy(p[at+24:at+36], fmt.Sprintf("%012x", i))
		if err := r.observe(message.NewMessage("m", p)); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
