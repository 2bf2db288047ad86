package producer_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/bus/jetstream"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/internal/e2e"
	"github.com/millrace/millrace/internal/routertest"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/router"
	"github.com/millrace/millrace/topologies"
	natstopology "github.com/millrace/millrace/topologies/nats"
)

const (
	entities  = 12
	perEntity = 5
	work      = 30 * time.Millisecond // each action's run
)

// The producers below use only what docs/bus.md gives: the helper, or
// the subject, headers and envelope on nats.go.
var producers = map[string]func(t *testing.T, js natsjs.JetStream, prefix string, partitions int, evs []*event.Event){
	"helper": func(t *testing.T, js natsjs.JetStream, prefix string, partitions int, evs []*event.Event) {
		pub := jetstream.NewPublisher(js, jetstream.Config{SubjectPrefix: prefix, Partitions: partitions})
		msgs := make([]*message.Message, len(evs))
		for i, ev := range evs {
			payload, err := event.Encode(ev)
			if err != nil {
				t.Fatal(err)
			}
			msgs[i] = message.NewMessage(ev.ID, payload)
			bus.SetRouting(msgs[i], ev)
		}
		if err := pub.Publish("events", msgs...); err != nil {
			t.Fatal(err)
		}
	},
	// nats.go alone, and no Millrace-Key: millrace takes the key from
	// the envelope.
	"wire": func(t *testing.T, js natsjs.JetStream, prefix string, partitions int, evs []*event.Event) {
		for _, ev := range evs {
			payload, err := event.Encode(ev)
			if err != nil {
				t.Fatal(err)
			}
			subject := prefix + ".events." + ev.Source + "." + ev.Entity + "." + string(ev.Type)
			if partitions > 0 {
				key := ev.Source + "\x00" + ev.Entity + "\x00" + ev.EntityID
				subject = prefix + ".events." + strconv.Itoa(fnv1a(key)%partitions) + "." + ev.Source + "." + ev.Entity + "." + string(ev.Type)
			}
			m := nats.NewMsg(subject)
			m.Data = payload
			m.Header.Set("Nats-Msg-Id", "events:"+ev.ID)
			m.Header.Set("Millrace-Uuid", ev.ID)
			if _, err := js.PublishMsg(t.Context(), m); err != nil {
				t.Fatalf("publish %s: %v", subject, err)
			}
		}
	},
}

// fnv1a is FNV-1a, 32 bit, as docs/bus.md names it.
func fnv1a(s string) int {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return int(h)
}

func TestProducerFromTheDocs(t *testing.T) {
	for _, partitions := range []int{0, 4} {
		for _, name := range []string{"helper", "wire"} {
			t.Run(fmt.Sprintf("%s/partitions=%d", name, partitions), func(t *testing.T) {
				_, js, prefix := testenv.NATS(t)
				rec := startMillrace(t, prefix, partitions)
				var evs []*event.Event
				for v := range perEntity {
					for e := range entities {
						evs = append(evs, &event.Event{ID: uuid.NewString(), Type: event.Update, Source: "shop",
							Entity: "Order", EntityID: strconv.Itoa(e), Data: map[string]any{"version": v}, Timestamp: time.Now().UTC()})
					}
				}
				start := time.Now()
				producers[name](t, js, prefix, partitions, evs)
				rec.Wait(t, len(evs))
				took := time.Since(start)

				got := rec.Snapshot()
				for _, bad := range got.InOrder() {
					t.Errorf("%s, want 0..%d in order", bad, perEntity-1)
				}
				// One after another the events would need entities ×
				// perEntity × work; per entity in parallel, about
				// perEntity × work.
				if got.MaxInFlight < entities/2 {
					t.Errorf("at most %d events ran at once, want at least %d (of %d entities): the entities were serialised", got.MaxInFlight, entities/2, entities)
				}
				t.Logf("%d events of %d entities in %s, at most %d at once", len(evs), entities, took.Round(time.Millisecond), got.MaxInFlight)
			})
		}
	}
}

// recorder is the observer's action: it notes each entity's versions in
// the order they ran, and how many ran at once.
type recordConfig struct{}

func (recordConfig) Validate() error { return nil }

// startMillrace runs millrace's nats topology in the test's process on
// the test's stream, with one observer of Order events.
func startMillrace(t *testing.T, prefix string, partitions int) *e2e.Recorder {
	t.Helper()
	rec := e2e.NewRecorder(work)
	actions := handlers.NewRegistry()
	handlers.MustRegister(actions, "record", func(context.Context, recordConfig, handlers.Deps) (handlers.Action, error) {
		return rec, nil
	})
	topo := topologies.NewRegistry()
	if err := natstopology.Register(topo); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(fmt.Appendf(nil, `
topology = "nats"
[http]
addr = "127.0.0.1:0"
[nats]
url = %q
stream = %q
subject_prefix = %q
consumer = %q
partitions = %d
partition_ttl = "2s"
[router]
shutdown_timeout = "5s"
max_in_flight = 64
[observers.orders]
entity = "Order"
concurrency = 64
actions = [{ type = "record" }]
`, testenv.NATSURL(), strings.ToUpper(prefix)+"_EVENTS", prefix, prefix, partitions), nil)
	if err != nil {
		t.Fatal(err)
	}
	routertest.Start(t, cfg, router.Options{Actions: actions, Topologies: topo})
	return rec
}
