package middleware_test

import (
	"context"
	"log/slog"
	"strconv"
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

// BenchmarkStack runs one event through an observer's whole delivery
// stack (failure policy, ledger with dedup and the result cache on a
// memory store, retry, one no-op action), as the router does for each
// event: what the stack itself costs per event.
func BenchmarkStack(b *testing.B) {
	benchStack(b, "", nil)
}

// BenchmarkStackParked is BenchmarkStack for an observer with
// on_failure = "park" while another entity is parked: the per-event
// check builds the event's key and looks it up in the in-process set.
func BenchmarkStackParked(b *testing.B) {
	parks := middleware.NewParks()
	parks.Park("bench", stores.ParkKey("", "Order", "2"), event.KeyOf("", "Order", "2"), time.Now())
	benchStack(b, "on_failure = \"park\"\n", parks)
}

func benchStack(b *testing.B, extra string, parks *middleware.Parks) {
	reg := handlers.NewRegistry()
	handlers.MustRegister(reg, "noop", func(context.Context, noConfig, handlers.Deps) (handlers.Action, error) {
		return handlers.ActionFunc(func(context.Context, *event.Event) error { return nil }), nil
	})
	cfg, err := config.Parse([]byte("[observers.bench]\n"+extra+"actions = [{ type = \"noop\" }]\n"), nil)
	if err != nil {
		b.Fatal(err)
	}
	obs, err := engine.Compile(context.Background(), cfg, reg, handlers.Deps{Config: cfg})
	if err != nil {
		b.Fatal(err)
	}
	o := obs[0]
	store, err := stores.NewMemoryStore(stores.MemoryStoreConfig{})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	metrics := middleware.NewMetrics()
	p := &middleware.Policy{
		Config: cfg, Metrics: metrics, Logger: slog.New(slog.DiscardHandler),
		Ledger:   middleware.NewLedger(store, store, middleware.LedgerConfig{}, metrics, nil),
		Breakers: middleware.NewBreakers(middleware.BreakerConfig{}, middleware.BreakerFailure),
		Parks:    parks,
	}
	stack := p.Stack(o)
	ev := &event.Event{Type: event.Insert, Entity: "Order", EntityID: "1", Data: map[string]any{"n": int64(1)}, Timestamp: time.Now()}
	payload := []byte(`{}`)
	ids := make([]string, 0, 1024)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i%1024 == 0 {
			b.StopTimer()
			ids = ids[:0]
			for range 1024 {
				ids = append(ids, uuid.NewString())
			}
			b.StartTimer()
		}
		e := *ev
		e.ID = ids[i%1024]
		i++
		msg := message.NewMessage(e.ID, payload)
		d := &middleware.Delivery{Event: &e, Observer: o, Payload: payload, Topic: "events",
			Actions: make([]middleware.ActionState, len(o.Actions))}
		if err := middleware.Run(msg, d, stack); err != nil || d.Outcome != middleware.OutcomeSucceeded {
			b.Fatalf("outcome %q, err %v", d.Outcome, err)
		}
	}
}

// BenchmarkLedgerRedis is the ledger's part of one event on the Redis
// store, as the peer job makes it: Begin (claim, no cache), then Commit,
// from many handlers at once, each event new. It counts what the ledger
// and the store's batching cost per event beside the round trips.
func BenchmarkLedgerRedis(b *testing.B) {
	client, prefix := testenv.Redis(b)
	store, err := stores.NewRedisStore(client, stores.RedisStoreConfig{KeyPrefix: prefix})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = store.Close() }()
	l := middleware.NewLedger(store, nil, middleware.LedgerConfig{}, nil, nil)
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	var seq atomic.Int64
	b.SetParallelism(32)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx, cancel := context.WithCancel(context.Background()) // as a message's
		defer cancel()
		for pb.Next() {
			c, err := l.Begin(ctx, run+"-"+strconv.FormatInt(seq.Add(1), 10), "obs", nil)
			if err != nil || c.Duplicate() {
				b.Errorf("Begin = %v, duplicate %v", err, c != nil && c.Duplicate())
				return
			}
			c.Commit(ctx)
		}
	})
}
