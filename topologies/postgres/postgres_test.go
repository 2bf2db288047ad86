package postgres_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/stores"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/postgres"
)

func build(t *testing.T, cfg *config.Config) *topologies.Backend {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := topologies.NewRegistry()
	if err := postgres.Register(reg); err != nil {
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

func testConfig() *config.Config {
	cfg := config.Default()
	cfg.Topology = "postgres"
	cfg.Router.ShutdownTimeout = config.Duration(2 * time.Second)
	return cfg
}

// source adds a source reading a fresh schema, which holds both its
// watched table "orders" and its capture schema.
func source(t *testing.T, cfg *config.Config, name string) func(sql string, args ...any) {
	t.Helper()
	pool, schema := testenv.Postgres(t)
	if _, err := pool.Exec(context.Background(), "CREATE TABLE orders (id bigint PRIMARY KEY, status text)"); err != nil {
		t.Fatal(err)
	}
	var s config.Source
	s.SetDefaults()
	s.Name, s.PostgresURL, s.Schema, s.Install = name, testenv.PostgresSchemaURL(t, schema), schema, true
	s.Tables = []string{"orders"}
	s.Entities = map[string]string{"orders": "Order"}
	cfg.Sources = append(cfg.Sources, s)
	return func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
			t.Fatal(err)
		}
	}
}

func ingested(t *testing.T) *message.Message {
	t.Helper()
	ev := &event.Event{ID: uuid.NewString(), Type: event.Custom, Entity: "Ping", EntityID: "1",
		Data: map[string]any{"n": 1}, Timestamp: time.Now().UTC(), Source: "http"}
	b, err := event.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	return message.NewMessage(ev.ID, b)
}

// receive collects n messages, acking each, by event source.
func receive(t *testing.T, ch <-chan *message.Message, n int) map[string][]*event.Event {
	t.Helper()
	out := map[string][]*event.Event{}
	for range n {
		select {
		case m := <-ch:
			ev, err := event.Decode(m.Payload)
			if err != nil {
				t.Fatalf("decode %s: %v", m.Payload, err)
			}
			out[ev.Source] = append(out[ev.Source], ev)
			m.Ack()
		case <-time.After(20 * time.Second):
			t.Fatalf("got %v, want %d messages", out, n)
		}
	}
	return out
}

// The observers read every source's change log on one channel, ingested
// events go to the first change log, and the stores are tables in the
// first source's database.
func TestChangeLogsAreTheBus(t *testing.T) {
	cfg := testConfig()
	execA := source(t, cfg, "a")
	execB := source(t, cfg, "b")
	b := build(t, cfg)
	if _, ok := b.Dedup.(*stores.PostgresStore); !ok {
		t.Errorf("dedup store %T, want *stores.PostgresStore", b.Dedup)
	}
	if _, ok := b.DeadLetters.(*stores.PostgresDeadLetters); !ok {
		t.Errorf("dead letters %T, want *stores.PostgresDeadLetters", b.DeadLetters)
	}
	if _, err := b.DeadLetters.Count(context.Background()); err != nil {
		t.Errorf("dead letters: %v", err)
	}
	if len(b.Captures) != 0 {
		t.Errorf("%d captures; the change log is the bus, there is nothing to forward", len(b.Captures))
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := b.Subscriber.Subscribe(ctx, "events")
	if err != nil {
		t.Fatal(err)
	}
	execA("INSERT INTO orders VALUES (1, 'new')")
	execB("INSERT INTO orders VALUES (2, 'new')")
	in := ingested(t)
	if err := b.Publisher.Publish("events", in); err != nil {
		t.Fatal(err)
	}
	got := receive(t, ch, 3)
	if len(got["a"]) != 1 || got["a"][0].EntityID != "1" || len(got["b"]) != 1 || got["b"][0].EntityID != "2" {
		t.Errorf("captured: a %v, b %v", got["a"], got["b"])
	}
	if len(got["http"]) != 1 || got["http"][0].ID != in.UUID {
		t.Errorf("ingested: %v, want %s", got["http"], in.UUID)
	}
}

// Without [[sources]], postgres.url holds the change log that ingested
// events travel through.
func TestIngestOnlyOnPostgresURL(t *testing.T) {
	_, schema := testenv.Postgres(t)
	cfg := testConfig()
	cfg.Postgres.URL = testenv.PostgresSchemaURL(t, schema)
	cfg.Postgres.Schema = schema
	b := build(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := b.Subscriber.Subscribe(ctx, "events")
	if err != nil {
		t.Fatal(err)
	}
	in := ingested(t)
	if err := b.Publisher.Publish("events", in); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, ch, 1); len(got["http"]) != 1 || got["http"][0].ID != in.UUID {
		t.Errorf("got %v, want the ingested %s", got, in.UUID)
	}
}

// TestRefusesWALCapture: the postgres topology's bus is the change log,
// which only the trigger capture fills.
func TestRefusesWALCapture(t *testing.T) {
	cfg := config.Default()
	cfg.Topology = "postgres"
	s := config.Source{Name: "a", PostgresURL: "postgres://x"}
	s.SetDefaults()
	s.Capture = config.CaptureWAL
	cfg.Sources = []config.Source{s}
	err := postgres.Validate(cfg)
	if err == nil || !strings.Contains(err.Error(), "sources[0].capture") {
		t.Fatalf("Validate = %v; want an error at sources[0].capture", err)
	}
}
