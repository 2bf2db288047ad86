package sqlbus_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/millrace/millrace/cmd/millrace/cli"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/examples/custom-bus/sqlbus"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/internal/routertest"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/router"
)

// Events posted to a router on the sql topology go through
// watermill-sql's table in PostgreSQL and reach the observer once each,
// in order (watermill-sql's subscriber hands out one at a time), and a
// second post of the same events runs nothing again (the dedup ledger).
func TestEventsCrossTheSQLBus(t *testing.T) {
	pool, schema := testenv.Postgres(t)
	rec := &recorder{runs: map[string]int{}}
	o := cli.Defaults()
	o.Topologies.MustRegister(sqlbus.Topology())
	handlers.MustRegister(o.Actions, "record", func(context.Context, recordConfig, handlers.Deps) (handlers.Action, error) {
		return rec, nil
	})
	cfg, err := config.Parse(fmt.Appendf(nil, `
topology = "sql"
[http]
addr = "127.0.0.1:0"
[router]
shutdown_timeout = "5s"
[embedded]
data_dir = %q
[postgres]
url = %q
schema = %q
[observers.orders]
entity = "Order"
actions = [{ type = "record" }]
`, t.TempDir(), testenv.PostgresURL(), schema), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := router.Check(cfg, o.Actions, o.Topologies); err != nil {
		t.Fatal(err)
	}
	addr, _ := routertest.Start(t, cfg, router.Options{Actions: o.Actions, Topologies: o.Topologies})

	var evs []*event.Event
	for i := range 10 {
		evs = append(evs, &event.Event{ID: uuid.NewString(), Type: event.Insert, Entity: "Order", EntityID: "1",
			Data: map[string]any{"n": i}, Timestamp: time.Now().UTC()})
	}
	post(t, addr, evs)
	deadline := time.Now().Add(30 * time.Second)
	for rec.count() < len(evs) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	post(t, addr, evs)
	time.Sleep(time.Second)

	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.order) != len(evs) {
		t.Fatalf("the action ran %d times for %d events posted twice, want %d", len(rec.order), len(evs), len(evs))
	}
	for i, n := range rec.order {
		if n != i {
			t.Errorf("events ran in the order %v, want 0..%d", rec.order, len(evs)-1)
			break
		}
	}
	// The events crossed watermill-sql's table, twice each.
	var rows int
	if err := pool.QueryRow(context.Background(), fmt.Sprintf(`SELECT count(*) FROM %q.watermill_events`, schema)).Scan(&rows); err != nil {
		t.Fatalf("watermill-sql's table: %v", err)
	}
	if rows != 2*len(evs) {
		t.Errorf("%d rows in %s.watermill_events, want %d (every event posted twice)", rows, schema, 2*len(evs))
	}
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

// recorder is the observer's action: the order of the events' "n" and
// the runs of each event.
type recorder struct {
	mu    sync.Mutex
	order []int
	runs  map[string]int
}

func (r *recorder) Execute(_ context.Context, ev *event.Event) error {
	n, err := strconv.Atoi(fmt.Sprint(ev.Data["n"]))
	if err != nil {
		n = -1
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.order = append(r.order, n)
	r.runs[ev.ID]++
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.order)
}

type recordConfig struct{}

func (recordConfig) Validate() error { return nil }
