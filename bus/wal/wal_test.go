package wal_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/bus/capture"
	"github.com/millrace/millrace/bus/wal"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/internal/testenv"
)

const wait = 30 * time.Second

func run(t testing.TB, db interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, sql string, args ...any) {
	t.Helper()
	if _, err := db.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// fixture is a schema with a table published for WAL capture.
type fixture struct {
	pool              *pgxpool.Pool
	schema            string
	slot, publication string
	cfg               wal.Config
}

func setup(t *testing.T, ddl string, tables ...string) *fixture {
	t.Helper()
	pool, schema := testenv.Postgres(t)
	slot, pub := testenv.ReplicationNames(t)
	run(t, pool, ddl)
	var qualified []string
	entities := map[string]string{}
	for _, tb := range tables {
		qualified = append(qualified, schema+"."+tb)
		entities[schema+"."+tb] = "Order"
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := wal.Setup(ctx, pool, wal.SetupConfig{Slot: slot, Publication: pub, Tables: qualified, ReplicaIdentityFull: true}); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return &fixture{pool: pool, schema: schema, slot: slot, publication: pub, cfg: wal.Config{
		Source: "orders_db", Slot: slot, Publication: pub, Entities: entities,
		MaxInFlight: 16, StatusInterval: 100 * time.Millisecond, RetryInterval: 100 * time.Millisecond, DrainTimeout: time.Second,
	}}
}

// subscribe starts a capture; it stops when the test ends or stop is called.
func (f *fixture) subscribe(t *testing.T, cfg wal.Config) (<-chan *message.Message, func()) {
	t.Helper()
	sub := wal.NewSubscriber(f.pool, cfg, nil, nil)
	ch, err := sub.Subscribe(context.Background(), "events")
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	stop := func() { _ = sub.Close() }
	t.Cleanup(stop)
	return ch, stop
}

// recv takes n messages, acking each.
func recv(t *testing.T, ch <-chan *message.Message, n int) []*message.Message {
	t.Helper()
	var out []*message.Message
	timeout := time.After(wait)
	for len(out) < n {
		select {
		case m, ok := <-ch:
			if testing.Verbose() && ok {
				t.Logf("%s", m.Payload)
			}
			if !ok {
				t.Fatalf("channel closed after %d of %d messages", len(out), n)
			}
			m.Ack()
			out = append(out, m)
		case <-timeout:
			t.Fatalf("got %d of %d messages in %s", len(out), n, wait)
		}
	}
	return out
}

func decode(t *testing.T, m *message.Message) *event.Event {
	t.Helper()
	ev, err := event.Decode(m.Payload)
	if err != nil {
		t.Fatalf("decode %s: %v", m.Payload, err)
	}
	if ev.ID != m.UUID {
		t.Errorf("event id %s, message UUID %s", ev.ID, m.UUID)
	}
	return ev
}

// comparable is what both capture modes must agree on.
type comparable struct {
	Type     event.Type              `json:"event_type"`
	Entity   string                  `json:"entity_type"`
	EntityID string                  `json:"entity_id"`
	Data     map[string]any          `json:"data"`
	Changes  map[string]event.Change `json:"changes"`
	Source   string                  `json:"source"`
}

func canon(t *testing.T, ev *event.Event) string {
	t.Helper()
	b, err := json.Marshal(comparable{ev.Type, ev.Entity, ev.EntityID, ev.Data, ev.Changes, ev.Source})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestSameEventsAsTriggerCapture runs inserts, updates with changes and
// deletes on one table watched by both capture modes, and asserts that
// they produce the same events, field for field, in the same order per
// entity.
func TestSameEventsAsTriggerCapture(t *testing.T) {
	f := setup(t, `CREATE TABLE orders (
		id int PRIMARY KEY, status text, amount numeric(10,2), price float8, qty int8, small int2,
		paid bool, tags text[], nums int[], meta jsonb, doc json, at timestamptz, day date, ts timestamp,
		uid uuid, note text)`, "orders")
	ctx := context.Background()
	if err := capture.Watch(ctx, f.pool, f.schema, []string{f.schema + ".orders"}, map[string]string{f.schema + ".orders": "Order"}); err != nil {
		t.Fatalf("Watch: %v", err)
	}
	walCh, _ := f.subscribe(t, f.cfg)
	trig := capture.NewSubscriber(f.pool, capture.Config{
		Source: "orders_db", Schema: f.schema, PollInterval: 20 * time.Millisecond, MaxInFlight: 16, DrainTimeout: time.Second,
	}, nil)
	t.Cleanup(func() { _ = trig.Close() })
	trigCh, err := trig.Subscribe(ctx, "cmp")
	if err != nil {
		t.Fatal(err)
	}

	stmts := []string{
		`INSERT INTO orders VALUES (1, 'new', 10.50, 1.5, 9007199254740993, 3, true, '{a,"b c",NULL}', '{1,2,3}',
			'{"k": [1, {"x": null}], "s": "é"}', '{"a":  1}', '2024-03-01 10:11:12.345678+00', '2024-03-01', '2024-03-01 10:11:12',
			'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'it''s "quoted"')`,
		`INSERT INTO orders (id, status, amount, price) VALUES (2, 'new', 0, 'NaN'), (3, NULL, -1e3, 'Infinity')`,
		`UPDATE orders SET status = 'paid', amount = 11, tags = '{x}' WHERE id = 1`,
		`UPDATE orders SET amount = 11.00 WHERE id = 1`, // same value: no changes
		`UPDATE orders SET meta = '{"k": 2}', paid = false, at = '2024-03-02 00:00:00+05:30' WHERE id = 1`,
		`UPDATE orders SET id = 4 WHERE id = 3`,
		`DELETE FROM orders WHERE id = 2`,
		`BEGIN; UPDATE orders SET note = 'x' WHERE id = 1; DELETE FROM orders WHERE id = 4; INSERT INTO orders (id) VALUES (5); COMMIT`,
	}
	for _, s := range stmts {
		run(t, f.pool, s)
	}
	const n = 11
	byKey := func(msgs []*message.Message) map[string][]string {
		out := map[string][]string{}
		for _, m := range msgs {
			ev := decode(t, m)
			out[ev.EntityID] = append(out[ev.EntityID], canon(t, ev))
		}
		return out
	}
	t.Log("wal capture")
	got := byKey(recv(t, walCh, n))
	t.Log("trigger capture")
	want := byKey(recv(t, trigCh, n))
	keys := func(m map[string][]string) []string {
		var k []string
		for x := range m {
			k = append(k, x)
		}
		sort.Strings(k)
		return k
	}
	if fmt.Sprint(keys(got)) != fmt.Sprint(keys(want)) {
		t.Fatalf("entity ids: wal %v, trigger %v", keys(got), keys(want))
	}
	for _, k := range keys(want) {
		if len(got[k]) != len(want[k]) {
			t.Errorf("entity %s: wal %d events, trigger %d", k, len(got[k]), len(want[k]))
			continue
		}
		for i := range want[k] {
			if got[k][i] != want[k][i] {
				t.Errorf("entity %s event %d:\n wal     %s\n trigger %s", k, i, got[k][i], want[k][i])
			}
		}
	}
}

// TestRestartRedeliversUnackedUnderSameIDs stops a capture with changes
// unacked (one large transaction, more than MaxPending) and checks that
// the next capture delivers them again with the same ids and that what
// was acked before the last commit is not delivered again.
func TestRestartRedeliversUnackedUnderSameIDs(t *testing.T) {
	f := setup(t, "CREATE TABLE orders (id int PRIMARY KEY, status text)", "orders")
	cfg := f.cfg
	cfg.MaxPending, cfg.MaxInFlight = 50, 8
	run(t, f.pool, "INSERT INTO orders VALUES (0, 'first')")
	run(t, f.pool, "INSERT INTO orders SELECT g, 'bulk' FROM generate_series(1, 500) g")

	ch, stop := f.subscribe(t, cfg)
	firstIDs := map[string]string{}
	for _, m := range recv(t, ch, 121) { // part of the large transaction, acked
		ev := decode(t, m)
		firstIDs[ev.EntityID] = ev.ID
	}
	// Let the confirmations reach the server, then stop mid-transaction:
	// the capture holds at most MaxPending unacked messages of it.
	time.Sleep(300 * time.Millisecond)
	stop()
	ch2, _ := f.subscribe(t, cfg)
	_, acked0 := firstIDs["0"]
	want := 500
	if !acked0 {
		want = 501
	}
	ids := map[string]string{}
	for _, m := range recv(t, ch2, want) {
		ev := decode(t, m)
		if ev.EntityID == "0" && acked0 {
			t.Errorf("the acked first transaction was delivered again")
		}
		ids[ev.EntityID] = ev.ID
	}
	if len(ids) != want {
		t.Fatalf("after the restart %d distinct rows of %d", len(ids), want)
	}
	for eid, id := range firstIDs {
		if eid != "0" && ids[eid] != id {
			t.Errorf("row %s: id %s after the restart, %s before", eid, ids[eid], id)
		}
	}
	select {
	case m := <-ch2:
		t.Fatalf("unexpected extra message %s", m.Payload)
	case <-time.After(500 * time.Millisecond):
	}
}
