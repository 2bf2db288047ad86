package publish_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	bus "github.com/millrace/millrace/bus/jetstream"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/engine"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/publish"
	"github.com/millrace/millrace/internal/testenv"
)

const path = "observers.o.actions[0]"

func registry(t *testing.T) *handlers.Registry {
	t.Helper()
	reg := handlers.NewRegistry()
	if err := publish.Register(reg); err != nil {
		t.Fatal(err)
	}
	return reg
}

// jetStreamBus is a real JetStream bus in a stream of the test's own.
type jetStreamBus struct {
	stream  jetstream.Stream
	subject func(topic string) string
	publish func(ctx context.Context, topic, id string, payload []byte) error
}

func newBus(t *testing.T) *jetStreamBus {
	t.Helper()
	_, js, prefix := testenv.NATS(t)
	cfg := bus.Config{
		Stream: strings.ToUpper(prefix) + "_BUS", SubjectPrefix: prefix,
		MaxAge: time.Hour, Replicas: 1, DuplicateWindow: time.Minute, Memory: true,
	}
	stream, err := bus.EnsureStream(context.Background(), js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	pub := bus.NewPublisher(js, cfg)
	return &jetStreamBus{
		stream:  stream,
		subject: func(topic string) string { return cfg.Subject(topic, "") },
		publish: func(ctx context.Context, topic, id string, payload []byte) error {
			return pub.Publish(topic, message.NewMessageWithContext(ctx, id, payload))
		},
	}
}

// messages returns every message of the stream, in order.
func (b *jetStreamBus) messages(t *testing.T) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	info, err := b.stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := b.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func build(t *testing.T, b *jetStreamBus, raw config.Action) handlers.Action {
	t.Helper()
	reg := registry(t)
	raw["type"] = "publish"
	spec, err := reg.Decode(path, raw)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	a, err := reg.Build(context.Background(), spec, handlers.Deps{Config: config.Default(), Publish: b.publish, ActionHash: spec.Hash})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return a
}

func order(id, entityID string) *event.Event {
	return &event.Event{
		ID: id, Type: event.Update, Entity: "Order", EntityID: entityID,
		Data:      map[string]any{"status": "shipped"},
		Timestamp: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC),
	}
}

const (
	evA = "0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01"
	evB = "5c3d7f1a-2b4e-4f6a-8c9d-0e1f2a3b4c5d"
)

func TestRepublishIsDeduplicatedAcrossRetries(t *testing.T) {
	t.Parallel()
	b := newBus(t)
	a := build(t, b, config.Action{"topic": "orders_shipped"})
	ctx := context.Background()

	for range 2 { // a retry of the same event and action
		if err := a.Execute(ctx, order(evA, "1001")); err != nil {
			t.Fatalf("Execute: %v", err)
		}
	}
	msgs := b.messages(t)
	if len(msgs) != 1 {
		t.Fatalf("the stream holds %d messages after two runs for one event, want 1", len(msgs))
	}
	m := msgs[0]
	if m.Subject != b.subject("orders_shipped") {
		t.Errorf("subject = %q, want %q", m.Subject, b.subject("orders_shipped"))
	}
	got, err := event.Decode(m.Data)
	if err != nil {
		t.Fatalf("payload %s is not an event: %v", m.Data, err)
	}
	if got.ID != evA || got.EntityID != "1001" || got.Data["status"] != "shipped" || got.Type != event.Update {
		t.Errorf("payload = %s, want the event %s", m.Data, evA)
	}
	// The bus prefixes the message id with its topic (ids dedup per topic).
	id := strings.TrimPrefix(m.Header.Get(jetstream.MsgIDHeader), "orders_shipped:")
	if _, err := uuid.Parse(id); err != nil || id == evA {
		t.Errorf("Nats-Msg-Id = %q, want a UUID other than the event id", id)
	}

	if err := a.Execute(ctx, order(evB, "1002")); err != nil {
		t.Fatalf("Execute: %v", err)
	}
	msgs = b.messages(t)
	if len(msgs) != 2 {
		t.Fatalf("the stream holds %d messages after a second event, want 2", len(msgs))
	}
	if second, err := event.Decode(msgs[1].Data); err != nil || second.ID != evB {
		t.Errorf("second message = %s (%v), want the event %s", msgs[1].Data, err, evB)
	}
	if msgs[1].Header.Get(jetstream.MsgIDHeader) == id {
		t.Error("two events were published with the same message id")
	}
}

func TestBodyTemplate(t *testing.T) {
	t.Parallel()
	b := newBus(t)
	a := build(t, b, config.Action{"topic": "notifications.orders", "body": `{"order":"{{.entity_id}}","status":"{{.data.status}}"}`})
	other := build(t, b, config.Action{"topic": "notifications.orders"})
	text := build(t, b, config.Action{"topic": "notifications.text", "body": `order {{.entity_id}} is {{.data.status}}`, "body_format": "text"})
	ctx := context.Background()
	ev := order(evA, "1001")
	ev.Data["status"] = `"shipped"`
	if err := a.Execute(ctx, ev); err != nil {
		t.Fatalf("Execute: %v", err)
	}
	// Another action on the same event publishes a message of its own.
	if err := other.Execute(ctx, ev); err != nil {
		t.Fatalf("Execute: %v", err)
	}
	if err := text.Execute(ctx, ev); err != nil {
		t.Fatalf("Execute: %v", err)
	}
	msgs := b.messages(t)
	if len(msgs) != 3 {
		t.Fatalf("the stream holds %d messages, want 3 (one per action)", len(msgs))
	}
	if got, want := string(msgs[2].Data), `order 1001 is "shipped"`; got != want {
		t.Errorf("text payload = %s, want %s", got, want)
	}
	// A quote in a value stays inside its JSON string.
	if got, want := string(msgs[0].Data), `{"order":"1001","status":"\"shipped\""}`; got != want {
		t.Errorf("payload = %s, want %s", got, want)
	}
	if msgs[0].Subject != b.subject("notifications.orders") {
		t.Errorf("subject = %q, want %q", msgs[0].Subject, b.subject("notifications.orders"))
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	reg := registry(t)
	spec, err := reg.Decode(path, config.Action{"type": "publish", "topic": "out", "body": "{{.data.x.y}}"})
	if err != nil {
		t.Fatal(err)
	}
	busErr := errors.New("bus unavailable")
	var fail bool
	a, err := reg.Build(context.Background(), spec, handlers.Deps{Publish: func(context.Context, string, string, []byte) error {
		if fail {
			return busErr
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	ev := order(evA, "1")
	ev.Data["x"] = "not a map"
	if err := a.Execute(context.Background(), ev); err == nil || !handlers.IsPermanent(err) {
		t.Errorf("Execute with a body that fails to render = %v, want a permanent error", err)
	}
	fail = true
	ev.Data["x"] = map[string]any{"y": 1}
	if err := a.Execute(context.Background(), ev); !errors.Is(err, busErr) || handlers.IsPermanent(err) {
		t.Errorf("Execute on a failing bus = %v, want a transient error wrapping %v", err, busErr)
	}
}

func TestBuildErrors(t *testing.T) {
	t.Parallel()
	reg := registry(t)
	noop := func(context.Context, string, string, []byte) error { return nil }
	for _, c := range []struct {
		name string
		raw  config.Action
		deps handlers.Deps
		want string
	}{
		{"no bus", config.Action{"type": "publish", "topic": "out"}, handlers.Deps{}, "no bus"},
		{"the event back onto router.topic", config.Action{"type": "publish", "topic": "events"},
			handlers.Deps{Config: config.Default(), Publish: noop}, "router.topic"},
	} {
		t.Run(c.name, func(t *testing.T) {
			spec, err := reg.Decode(path, c.raw)
			if err != nil {
				t.Fatal(err)
			}
			_, err = reg.Build(context.Background(), spec, c.deps)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("Build = %v, want an error with %q and %s", err, c.want, path)
			}
		})
	}
	// With a body, router.topic is allowed: the body is a new event.
	spec, err := reg.Decode(path, config.Action{"type": "publish", "topic": "events", "body": "{}"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Build(context.Background(), spec, handlers.Deps{Config: config.Default(), Publish: noop}); err != nil {
		t.Errorf("Build to router.topic with a body: %v", err)
	}
}

func TestMessageID(t *testing.T) {
	a, b := publish.MessageID(evA, "h1"), publish.MessageID(evA, "h1")
	if a != b {
		t.Errorf("MessageID is not stable: %s, %s", a, b)
	}
	if publish.MessageID(evA, "h2") == a || publish.MessageID(evB, "h1") == a {
		t.Error("MessageID does not depend on both the event id and the action hash")
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	reg := registry(t)
	valid := func() config.Action { return config.Action{"type": "publish", "topic": "orders.out"} }
	if _, err := reg.Decode(path, valid()); err != nil {
		t.Fatalf("a valid section: %v", err)
	}
	const p = path + "."
	cases := []struct {
		name   string
		change func(config.Action)
		want   string
	}{
		{"topic missing", func(a config.Action) { delete(a, "topic") }, p + "topic: is required"},
		{"topic with a space", func(a config.Action) { a["topic"] = "orders out" }, p + "topic:"},
		{"topic with a wildcard", func(a config.Action) { a["topic"] = "orders.>" }, p + "topic:"},
		{"topic with an empty token", func(a config.Action) { a["topic"] = "orders..out" }, p + "topic:"},
		{"body does not parse", func(a config.Action) { a["body"] = "{{.entity_id" }, p + "body: template does not parse"},
		{"json body is not JSON", func(a config.Action) { a["body"] = `{"id": {{.id}}` }, p + "body:"},
		{"body format", func(a config.Action) { a["body_format"] = "xml" }, p + "body_format:"},
		{"unknown key", func(a config.Action) { a["subject"] = "x" }, p + "subject: unknown key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := valid()
			c.change(a)
			_, err := reg.Decode(path, a)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Decode = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// TestCheckConfig: at validate time, a topic other than router.topic
// needs a bus with topics, and the event unchanged must not go back to
// router.topic, whatever the topology.
func TestCheckConfig(t *testing.T) {
	t.Parallel()
	reg := registry(t)
	postgres := config.Default()
	postgres.Topology, postgres.Postgres.URL = "postgres", "postgres://x"
	topics := config.Features{Topics: true}
	const body = `{"id": "{{ .id }}-2", "event_type": "CUSTOM", "entity_type": "X", "entity_id": "1"}`
	for _, c := range []struct {
		name     string
		action   config.Action
		cfg      *config.Config
		features config.Features
		want     string // "" for valid
	}{
		{"another topic on a bus with topics", config.Action{"topic": "out"}, config.Default(), topics, ""},
		{"another topic on the postgres topology", config.Action{"topic": "out"}, postgres, config.Features{},
			path + `.topic: the postgres topology's bus has no topics besides router.topic ("events")`},
		{"a new event on router.topic, postgres topology", config.Action{"topic": "events", "body": body}, postgres, config.Features{}, ""},
		{"the event unchanged on router.topic", config.Action{"topic": "events"}, config.Default(), topics,
			path + `.topic: topic "events" is router.topic: the event would come back to the same observers`},
		{"the event unchanged on router.topic, postgres topology", config.Action{"topic": "events"}, postgres, config.Features{},
			path + `.topic: topic "events" is router.topic`},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.action["type"] = "publish"
			c.cfg.Observers = map[string]config.Observer{"o": {Actions: []config.Action{c.action}}}
			err := engine.Check(c.cfg, reg, c.features)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("Check = %v; want valid", err)
			case c.want != "" && (err == nil || !strings.HasPrefix(err.Error(), c.want)):
				t.Errorf("Check = %v; want %s…", err, c.want)
			}
		})
	}
}
