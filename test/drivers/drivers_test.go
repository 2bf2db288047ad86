package drivers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/internal/e2e"
	"github.com/millrace/millrace/internal/routertest"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/router"
	"github.com/millrace/millrace/topologies"
	natstopology "github.com/millrace/millrace/topologies/nats"
	redistopology "github.com/millrace/millrace/topologies/redis"
)

const work = 20 * time.Millisecond // each action's run

// driver is a topology with an upstream driver, on the test's own
// stream, subjects or keys.
type driver struct {
	// section is the TOML of the topology's section.
	section string
	// check fails the test unless the upstream driver read the events:
	// its consumers are not those millrace's bus would make.
	check func(t *testing.T, maxInFlight int)
}

var drivers = map[string]func(t *testing.T) driver{
	"nats": func(t *testing.T) driver {
		_, js, prefix := testenv.NATS(t)
		stream := strings.ToUpper(prefix) + "_EVENTS"
		return driver{
			section: fmt.Sprintf("[nats]\nurl = %q\nstream = %q\nsubject_prefix = %q\nconsumer = %q\n",
				testenv.NATSURL(), stream, prefix, prefix),
			// watermill-nats's subscriptions share a durable push
			// consumer in a deliver group; millrace's is a pull consumer.
			check: func(t *testing.T, _ int) {
				st, err := js.Stream(t.Context(), stream)
				if err != nil {
					t.Fatal(err)
				}
				var cc *njs.ConsumerConfig
				l := st.ListConsumers(t.Context())
				for info := range l.Info() {
					if info.Name == prefix+"_events" {
						cc = &info.Config
					}
				}
				if err := l.Err(); err != nil {
					t.Fatal(err)
				}
				if cc == nil {
					t.Fatalf("no consumer %s_events on stream %s", prefix, stream)
				}
				if cc.DeliverGroup != prefix+"_events" || cc.DeliverSubject == "" {
					t.Errorf("consumer %s_events: deliver group %q, subject %q: not watermill-nats's push consumer",
						prefix, cc.DeliverGroup, cc.DeliverSubject)
				}
			},
		}
	},
	"redis": func(t *testing.T) driver {
		client, prefix := testenv.Redis(t)
		return driver{
			section: fmt.Sprintf("[redis]\nurl = %q\nkey_prefix = %q\nconsumer = \"w\"\n", testenv.RedisURL(), prefix),
			// One upstream subscriber, one consumer of the group, per
			// event handled at once: w, w-1, ...
			check: func(t *testing.T, maxInFlight int) {
				cs, err := client.XInfoConsumers(t.Context(), prefix+"events", "millrace").Result()
				if err != nil {
					t.Fatal(err)
				}
				var names []string
				for _, c := range cs {
					names = append(names, c.Name)
				}
				slices.Sort(names)
				want := []string{"w"}
				for i := 1; i < maxInFlight; i++ {
					want = append(want, "w-"+strconv.Itoa(i))
				}
				slices.Sort(want)
				if !slices.Equal(names, want) {
					t.Errorf("consumers of the group: %v, want %v", names, want)
				}
			},
		}
	},
}

// Events posted to a router on the upstream driver reach the observer
// once each, duplicates posted again included (the stream's duplicate
// window on NATS, the dedup ledger on Redis). With router.max_in_flight
// = 1 they are handled one at a time, in order per entity; with more,
// several at once, and the order per entity is not promised (not
// checked).
func TestUpstreamDriverEndToEnd(t *testing.T) {
	for name, newDriver := range drivers {
		for _, inFlight := range []int{1, 8} {
			t.Run(fmt.Sprintf("%s/max_in_flight=%d", name, inFlight), func(t *testing.T) {
				t.Parallel()
				d := newDriver(t)
				rec, addr := start(t, name, d.section, inFlight)
				const entities, perEntity = 6, 4
				var evs []*event.Event
				for v := range perEntity {
					for e := range entities {
						evs = append(evs, &event.Event{ID: uuid.NewString(), Type: event.Update, Source: "shop",
							Entity: "Order", EntityID: strconv.Itoa(e), Data: map[string]any{"version": v}, Timestamp: time.Now().UTC()})
					}
				}
				post(t, addr, evs)
				rec.Wait(t, len(evs))
				post(t, addr, evs) // the same events again
				time.Sleep(time.Second)

				got := rec.Snapshot()
				if got.Runs != len(evs) {
					t.Errorf("the action ran %d times for %d events posted twice, want %d", got.Runs, len(evs), len(evs))
				}
				for id, n := range got.ByEvent {
					if n != 1 {
						t.Errorf("event %s ran %d times, want once", id, n)
					}
				}
				switch {
				case inFlight == 1 && got.MaxInFlight != 1:
					t.Errorf("max_in_flight = 1: %d events ran at once, want one at a time", got.MaxInFlight)
				case inFlight == 1:
					for _, bad := range got.InOrder() {
						t.Errorf("max_in_flight = 1: %s, want 0..%d in order", bad, perEntity-1)
					}
				case got.MaxInFlight < 2:
					t.Errorf("max_in_flight = %d: at most %d event ran at once, want several subscriptions at work", inFlight, got.MaxInFlight)
				}
				d.check(t, inFlight)
				t.Logf("%s: %d events, at most %d at once", name, len(evs), got.MaxInFlight)
			})
		}
	}
}

// start runs a router on the topology's upstream driver, picked by
// MILLRACE_BUS__DRIVER as a deployment would, with one observer whose
// action is rec and dedup and the result cache on.
func start(t *testing.T, topology, section string, maxInFlight int) (*e2e.Recorder, string) {
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
	if err := redistopology.Register(topo); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(fmt.Appendf(nil, `
topology = %q
[http]
addr = "127.0.0.1:0"
[router]
shutdown_timeout = "5s"
max_in_flight = %d
[dedup]
enabled = true
[cache]
enabled = true
[observers.orders]
entity = "Order"
actions = [{ type = "record" }]
%s`, topology, maxInFlight, section), []string{"MILLRACE_BUS__DRIVER=watermill"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Bus.Driver != config.DriverWatermill {
		t.Fatalf("bus.driver is %q, want the environment's %q", cfg.Bus.Driver, config.DriverWatermill)
	}
	addr, _ := routertest.Start(t, cfg, router.Options{Actions: actions, Topologies: topo})
	return rec, addr
}

func post(t *testing.T, addr string, evs []*event.Event) {
	t.Helper()
	body, err := json.Marshal(evs)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post("http://"+addr+"/v1/events", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /v1/events: %s", resp.Status)
	}
}

// recorder is the observer's action: it counts the runs of each event,
// notes each entity's versions in the order they ran, and how many ran
// at once.
type recordConfig struct{}

func (recordConfig) Validate() error { return nil }
