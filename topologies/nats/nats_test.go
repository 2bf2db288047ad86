package nats_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/stores"

	"github.com/millrace/millrace/bus"

	"github.com/ThreeDotsLabs/watermill/message"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/nats"
)

// testConfig points the nats topology at the test server, with names of
// the test's own.
func testConfig(t *testing.T) (*config.Config, njs.JetStream) {
	t.Helper()
	_, js, prefix := testenv.NATS(t)
	cfg := config.Default()
	cfg.Topology = "nats"
	cfg.Role = "observe"
	cfg.NATS.URL = testenv.NATSURL()
	cfg.NATS.Stream = strings.ToUpper(prefix)
	cfg.NATS.SubjectPrefix = prefix
	cfg.NATS.Consumer = prefix
	cfg.NATS.MaxAge = config.Duration(time.Hour)
	cfg.Dedup.Window = config.Duration(2 * time.Minute)
	cfg.Router.ShutdownTimeout = config.Duration(time.Second)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg, js
}

func build(t *testing.T, cfg *config.Config) *topologies.Backend {
	t.Helper()
	reg := topologies.NewRegistry()
	if err := nats.Register(reg); err != nil {
		t.Fatal(err)
	}
	b, err := reg.Build(context.Background(), cfg, nil)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return b
}

// The stream is provisioned from the config, an event goes to
// <prefix>.<topic>.<source>.<entity>.<op> with its id in Nats-Msg-Id (a
// republished one is dropped), and the workers' consumer gets it.
func TestBusOnTheServer(t *testing.T) {
	cfg, js := testConfig(t)
	b := build(t, cfg)
	ctx := context.Background()

	info, err := js.Stream(ctx, cfg.NATS.Stream)
	if err != nil {
		t.Fatalf("stream %s not provisioned: %v", cfg.NATS.Stream, err)
	}
	sc := info.CachedInfo().Config
	if sc.Duplicates != 2*time.Minute || sc.MaxAge != time.Hour || len(sc.Subjects) != 1 || sc.Subjects[0] != cfg.NATS.SubjectPrefix+".>" {
		t.Errorf("stream config: duplicates %s, max age %s, subjects %v", sc.Duplicates, sc.MaxAge, sc.Subjects)
	}

	newMsg := func() *message.Message {
		m := message.NewMessage("0b9f3c9e-5d44-4d4c-9a57-2f1b0c9e4101", []byte(`{"x":1}`))
		m.Metadata.Set(bus.KeyMetadata, "orders_db\x00Order\x0042")
		m.Metadata.Set(bus.SubjectMetadata, "orders_db.Order.UPDATE")
		return m
	}
	for range 2 {
		if err := b.Publisher.Publish("events", newMsg()); err != nil {
			t.Fatal(err)
		}
	}
	want := cfg.NATS.SubjectPrefix + ".events.orders_db.Order.UPDATE"
	raw, err := info.GetLastMsgForSubject(ctx, want)
	if err != nil {
		t.Fatalf("no message on %s: %v", want, err)
	}
	// The bus qualifies the id with the topic (jetstream.Publisher).
	if got := raw.Header.Get(njs.MsgIDHeader); !strings.HasSuffix(got, newMsg().UUID) {
		t.Errorf("Nats-Msg-Id = %q, want it to carry the event id", got)
	}
	if s, _ := js.Stream(ctx, cfg.NATS.Stream); s.CachedInfo().State.Msgs != 1 {
		t.Errorf("stream holds %d messages after publishing one event twice, want 1", s.CachedInfo().State.Msgs)
	}

	ch, err := b.Subscriber.Subscribe(ctx, "events")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-ch:
		if m.UUID != newMsg().UUID || string(m.Payload) != `{"x":1}` {
			t.Errorf("got %s %s", m.UUID, m.Payload)
		}
		m.Ack()
	case <-time.After(10 * time.Second):
		t.Fatal("the consumer got nothing")
	}
	if err := b.Subscriber.Close(); err != nil {
		t.Fatal(err)
	}
}

// Dead letters work on the server (a stream of their own).
func TestDeadLettersOnTheServer(t *testing.T) {
	cfg, _ := testConfig(t)
	b := build(t, cfg)
	ctx := context.Background()
	id, err := b.DeadLetters.Put(ctx, stores.DeadLetter{Observer: "o", Reason: stores.ReasonPermanent, Error: "boom", Payload: []byte(`{}`)})
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	got, err := b.DeadLetters.Get(ctx, id)
	if err != nil || got.Error != "boom" {
		t.Fatalf("get %s: %+v, %v", id, got, err)
	}
	list, err := b.DeadLetters.List(ctx, stores.DeadLetterFilter{Observer: "o"})
	if err != nil || len(list) != 1 {
		t.Fatalf("list: %d entries, %v", len(list), err)
	}
}

// Without Redis, dedup and cache fall back to memory (nil stores); with
// it, they are in Redis.
func TestStoresFollowRedisConfig(t *testing.T) {
	cfg, _ := testConfig(t)
	if b := build(t, cfg); b.Dedup != nil || b.Cache != nil {
		t.Errorf("without redis.url: dedup %T, cache %T, want none", b.Dedup, b.Cache)
	}
	_, prefix := testenv.Redis(t)
	cfg.Redis.URL = testenv.RedisURL()
	cfg.Redis.KeyPrefix = prefix
	b := build(t, cfg)
	if _, ok := b.Dedup.(*stores.RedisStore); !ok {
		t.Errorf("with redis.url: dedup %T, want *stores.RedisStore", b.Dedup)
	}
	if _, ok := b.Cache.(*stores.RedisStore); !ok {
		t.Errorf("with redis.url: cache %T, want *stores.RedisStore", b.Cache)
	}
}

// A stream that exists and cannot be changed to the config (here: its
// storage) is used as it is.
func TestExistingStreamIsUsedAsItIs(t *testing.T) {
	cfg, js := testConfig(t)
	_, err := js.CreateStream(context.Background(), njs.StreamConfig{
		Name: cfg.NATS.Stream, Subjects: []string{cfg.NATS.SubjectPrefix + ".>"}, Storage: njs.MemoryStorage,
	})
	if err != nil {
		t.Fatal(err)
	}
	b := build(t, cfg)
	m := message.NewMessage("0b9f3c9e-5d44-4d4c-9a57-2f1b0c9e4102", []byte(`{}`))
	if err := b.Publisher.Publish("events", m); err != nil {
		t.Fatalf("publish to the existing stream: %v", err)
	}
	s, err := js.Stream(context.Background(), cfg.NATS.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if info := s.CachedInfo(); info.Config.Storage != njs.MemoryStorage || info.State.Msgs != 1 {
		t.Errorf("stream storage %v with %d messages; want the operator's memory stream with 1", info.Config.Storage, info.State.Msgs)
	}
}

// With partitions the start-up log gives the stream's real subjects, one
// per partition, as the stream is provisioned with them.
func TestStartupLogNamesPartitionSubjects(t *testing.T) {
	cfg, js := testConfig(t)
	cfg.NATS.Partitions = 3
	reg := topologies.NewRegistry()
	if err := nats.Register(reg); err != nil {
		t.Fatal(err)
	}
	var logged []string
	logger := slog.New(recordHandler(func(r slog.Record) {
		if r.Message != "nats topology: JetStream bus" {
			return
		}
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "subjects" {
				logged = append(logged, fmt.Sprint(a.Value.Any()))
			}
			return true
		})
	}))
	b, err := reg.Build(context.Background(), cfg, logger)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	info, err := js.Stream(context.Background(), cfg.NATS.Stream)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint(info.CachedInfo().Config.Subjects)
	if len(info.CachedInfo().Config.Subjects) != 3 || len(logged) != 1 || logged[0] != want {
		t.Errorf("start-up log subjects %v, stream subjects %s; want the stream's 3 partition subjects once", logged, want)
	}
}

// recordHandler is a slog.Handler that hands every record to f.
type recordHandler func(slog.Record)

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	h(r)
	return nil
}
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordHandler) WithGroup(string) slog.Handler      { return h }
