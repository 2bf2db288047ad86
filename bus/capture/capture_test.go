package capture_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/bus"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/bus/capture"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/internal/testenv"
)

const wait = 30 * time.Second

// setup gives a pool in a fresh schema, which also holds the change log,
// with a watched table orders(id int primary key, status text, amount numeric).
func setup(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	pool, schema := testenv.Postgres(t)
	run(t, pool, "CREATE TABLE orders (id int PRIMARY KEY, status text, amount numeric, note text)")
	if err := capture.Watch(context.Background(), pool, schema, []string{schema + ".orders"}, map[string]string{schema + ".orders": "Order"}); err != nil {
		t.Fatalf("Watch: %v", err)
	}
	return pool, schema
}

func run(t testing.TB, db interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, sql string, args ...any) {
	t.Helper()
	if _, err := db.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func config(schema string) capture.Config {
	return capture.Config{
		Source:       "orders_db",
		Schema:       schema,
		PollInterval: 20 * time.Millisecond,
		BatchSize:    100,
		MaxInFlight:  16,
		LeaseRetry:   100 * time.Millisecond,
		DrainTimeout: time.Second,
	}
}

// subscribe starts a subscriber for group; it stops when the test ends.
func subscribe(t testing.TB, pool *pgxpool.Pool, cfg capture.Config, group string) (<-chan *message.Message, context.CancelFunc, *capture.Subscriber) {
	t.Helper()
	sub := capture.NewSubscriber(pool, cfg, testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := sub.Subscribe(ctx, group)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	t.Cleanup(func() { cancel(); _ = sub.Close() })
	return ch, cancel, sub
}

// next returns the next message or fails the test after wait.
func next(t testing.TB, ch <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("subscription closed")
		}
		return m
	case <-time.After(wait):
		t.Fatal("no message within", wait)
	}
	return nil
}

// none fails when a message arrives within d.
func none(t testing.TB, ch <-chan *message.Message, d time.Duration) {
	t.Helper()
	select {
	case m := <-ch:
		t.Fatalf("unexpected message %s: %s", m.UUID, m.Payload)
	case <-time.After(d):
	}
}

func decode(t testing.TB, m *message.Message) *event.Event {
	t.Helper()
	ev, err := event.Decode(m.Payload)
	if err != nil {
		t.Fatalf("payload of %s: %v\n%s", m.UUID, err, m.Payload)
	}
	return ev
}

// ackAll acks n messages and returns their events, in arrival order.
func ackAll(t testing.TB, ch <-chan *message.Message, n int) []*event.Event {
	t.Helper()
	out := make([]*event.Event, 0, n)
	for range n {
		m := next(t, ch)
		out = append(out, decode(t, m))
		m.Ack()
	}
	return out
}

func TestInsertUpdateDelete(t *testing.T) {
	t.Parallel()
	pool, schema := setup(t)
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config('millrace.user_id', 'alice', true), set_config('millrace.tenant_id', 't1', true)"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "INSERT INTO orders VALUES (7, 'new', 10.5, 'x')")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	run(t, pool, "UPDATE orders SET status = 'shipped', amount = 12, note = NULL WHERE id = 7")
	run(t, pool, "DELETE FROM orders WHERE id = 7")

	ch, _, _ := subscribe(t, pool, config(schema), "observers")
	var msgs []*message.Message
	var evs []*event.Event
	for range 3 {
		m := next(t, ch)
		msgs = append(msgs, m)
		evs = append(evs, decode(t, m))
		m.Ack()
	}

	rows, err := pool.Query(ctx, "SELECT id::text, position FROM "+schema+".change_log ORDER BY position")
	if err != nil {
		t.Fatal(err)
	}
	type logRow struct {
		ID       string
		Position int64
	}
	log, err := pgx.CollectRows(rows, pgx.RowToStructByPos[logRow])
	if err != nil || len(log) != 3 {
		t.Fatalf("change log = %v, %v; want 3 rows", log, err)
	}

	types := []event.Type{event.Insert, event.Update, event.Delete}
	for i, ev := range evs {
		if ev.Type != types[i] || ev.Entity != "Order" || ev.EntityID != "7" || ev.Source != "orders_db" {
			t.Errorf("event %d = %s %s %q from %q; want %s Order \"7\" from orders_db", i, ev.Type, ev.Entity, ev.EntityID, ev.Source, types[i])
		}
		if msgs[i].UUID != ev.ID || ev.ID != log[i].ID {
			t.Errorf("event %d: message UUID %s, event id %s, change id %s; want all equal", i, msgs[i].UUID, ev.ID, log[i].ID)
		}
		if ev.Seq != log[i].Position {
			t.Errorf("event %d: seq %d, want position %d", i, ev.Seq, log[i].Position)
		}
		if ev.Timestamp.IsZero() {
			t.Errorf("event %d: no timestamp", i)
		}
		if got, want := msgs[i].Metadata.Get(bus.KeyMetadata), ev.Key(); got != want {
			t.Errorf("event %d: key metadata %q, want %q", i, got, want)
		}
		if got, want := msgs[i].Metadata.Get(bus.SubjectMetadata), "orders_db.Order."+string(types[i]); got != want {
			t.Errorf("event %d: subject metadata %q, want %q", i, got, want)
		}
	}
	if evs[0].UserID != "alice" || evs[0].TenantID != "t1" {
		t.Errorf("insert: user %q tenant %q; want alice, t1 (from the session settings)", evs[0].UserID, evs[0].TenantID)
	}
	if evs[1].UserID != "" {
		t.Errorf("update: user %q; want none (the setting was local to the first transaction)", evs[1].UserID)
	}
	if d := evs[0].Data; d["status"] != "new" || d["amount"] != 10.5 || d["id"] != int64(7) || evs[0].Changes != nil {
		t.Errorf("insert data = %v, changes = %v", d, evs[0].Changes)
	}
	if d := evs[1].Data; d["status"] != "shipped" || d["amount"] != int64(12) || d["note"] != nil {
		t.Errorf("update data = %v", d)
	}
	wantChanges := map[string]event.Change{
		"status": {Old: "new", New: "shipped"},
		"amount": {Old: 10.5, New: int64(12)},
		"note":   {Old: "x", New: nil},
	}
	if fmt.Sprint(evs[1].Changes) != fmt.Sprint(wantChanges) {
		t.Errorf("update changes = %v, want %v", evs[1].Changes, wantChanges)
	}
	if d := evs[2].Data; d["status"] != "shipped" || d["id"] != int64(7) {
		t.Errorf("delete data = %v, want the before-image", d)
	}
}

func TestCompositeKeyAndDefaultEntity(t *testing.T) {
	t.Parallel()
	pool, schema := testenv.Postgres(t)
	run(t, pool, "CREATE TABLE order_lines (order_id int, line int, sku text, PRIMARY KEY (order_id, line))")
	if err := capture.Watch(context.Background(), pool, schema, []string{schema + ".order_lines"}, nil); err != nil {
		t.Fatal(err)
	}
	run(t, pool, "INSERT INTO order_lines VALUES (3, 2, 'abc')")
	ch, _, _ := subscribe(t, pool, config(schema), "g")
	ev := ackAll(t, ch, 1)[0]
	if ev.Entity != "order_lines" || ev.EntityID != "3:2" {
		t.Errorf("entity %q id %q; want order_lines \"3:2\"", ev.Entity, ev.EntityID)
	}
}

// A transaction that took its position first and commits last is read,
// and nothing after it is released before it (commit order per row).
func TestLateCommitIsRead(t *testing.T) {
	t.Parallel()
	pool, schema := setup(t)
	ctx := context.Background()
	ch, _, _ := subscribe(t, pool, config(schema), "g")

	run(t, pool, "INSERT INTO orders VALUES (0, 'before')")
	if ev := ackAll(t, ch, 1)[0]; ev.EntityID != "0" {
		t.Fatalf("first event for %s, want 0", ev.EntityID)
	}

	t1, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = t1.Rollback(ctx) }()
	if _, err := t1.Exec(ctx, "INSERT INTO orders VALUES (1, 'slow')"); err != nil {
		t.Fatal(err)
	}
	run(t, pool, "INSERT INTO orders VALUES (2, 'fast')") // T2 commits

	// The reader polls many times while T1 is open; it must not move past
	// T1's position (a reader keeping "position > last seen" would read
	// T2's row here and never read T1's).
	none(t, ch, 40*config(schema).PollInterval)

	if err := t1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := ids(ackAll(t, ch, 2)); got != "[1 2]" {
		t.Fatalf("after T1 committed: events for %s; want [1 2]", got)
	}
	none(t, ch, 10*config(schema).PollInterval)
}

// Positions left empty by rolled-back transactions do not stop the reader.
func TestRolledBackPositionsAreSkipped(t *testing.T) {
	t.Parallel()
	pool, schema := setup(t)
	ctx := context.Background()
	for i := range 3 {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO orders VALUES ($1, 'rolled back')", 100+i); err != nil {
			t.Fatal(err)
		}
		_ = tx.Rollback(ctx)
		run(t, pool, "INSERT INTO orders VALUES ($1, 'kept')", i)
	}
	ch, _, _ := subscribe(t, pool, config(schema), "g")
	evs := ackAll(t, ch, 3)
	if got := ids(evs); got != "[0 1 2]" {
		t.Errorf("released changes of %s, want [0 1 2]", got)
	}
	none(t, ch, 10*config(schema).PollInterval)
}

// ids lists the entity ids of evs, sorted.
func ids(evs []*event.Event) string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.EntityID)
	}
	sort.Strings(out)
	return fmt.Sprint(out)
}

// Cancelling a reader with messages released but not acked, then starting
// another, releases every unacked change again with the same UUID, and
// none of those acked before the checkpoint.
func TestCancelMidBatchReplaysTheUnacked(t *testing.T) {
	t.Parallel()
	pool, schema := setup(t)
	run(t, pool, "INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 50) g")
	cfg := config(schema)
	cfg.MaxInFlight = 64

	ch, cancel, sub := subscribe(t, pool, cfg, "g")
	first := map[string]string{} // entity id → UUID
	var held []*message.Message
	for range 50 {
		m := next(t, ch)
		ev := decode(t, m)
		first[ev.EntityID] = m.UUID
		if n := atoi(ev.EntityID); n <= 20 {
			m.Ack()
		} else {
			held = append(held, m) // never acked
		}
	}
	// The checkpoint reaches position 20 (ids 1..20 are positions 1..20).
	deadline := time.Now().Add(wait)
	for checkpoint(t, pool, schema, "orders_db", "g") != 20 {
		if time.Now().After(deadline) {
			t.Fatalf("checkpoint = %d, want 20", checkpoint(t, pool, schema, "orders_db", "g"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	_ = sub.Close()
	if len(held) != 30 {
		t.Fatalf("held %d messages, want 30", len(held))
	}

	ch2, _, _ := subscribe(t, pool, cfg, "g")
	seen := map[string]string{}
	for range 30 {
		m := next(t, ch2)
		ev := decode(t, m)
		seen[ev.EntityID] = m.UUID
		m.Ack()
	}
	none(t, ch2, 10*cfg.PollInterval)
	for id := 21; id <= 50; id++ {
		k := fmt.Sprint(id)
		if seen[k] == "" {
			t.Errorf("change for %s was not released again", k)
		} else if seen[k] != first[k] {
			t.Errorf("change for %s came back as %s, first as %s", k, seen[k], first[k])
		}
	}
}

func atoi(s string) int {
	var n int
	_, _ = fmt.Sscan(s, &n)
	return n
}

func checkpoint(t testing.TB, pool *pgxpool.Pool, schema, source, group string) int64 {
	t.Helper()
	var pos int64
	err := pool.QueryRow(context.Background(), "SELECT coalesce(max(position), 0) FROM "+schema+".checkpoints WHERE source = $1 AND consumer_group = $2",
		source, group).Scan(&pos)
	if err != nil {
		t.Fatal(err)
	}
	return pos
}

// A nacked message is released again, before the next change of its
// entity, while other entities go on.
func TestNackIsRetriedBeforeTheNextChangeOfItsEntity(t *testing.T) {
	t.Parallel()
	pool, schema := setup(t)
	run(t, pool, "INSERT INTO orders VALUES (1, 'new')")
	run(t, pool, "UPDATE orders SET status = 'paid' WHERE id = 1")
	run(t, pool, "INSERT INTO orders VALUES (2, 'new')")
	ch, _, _ := subscribe(t, pool, config(schema), "g")

	var order []string
	nacked := ""
	for len(order) < 3 {
		m := next(t, ch)
		ev := decode(t, m)
		if ev.EntityID == "1" && ev.Type == event.Insert && nacked == "" {
			nacked = m.UUID
			m.Metadata.Set(bus.RetryDelayMetadata, "300ms")
			m.Nack()
			continue
		}
		if ev.EntityID == "1" && ev.Type == event.Insert {
			if m.UUID != nacked || m.Metadata.Get(bus.DeliveryMetadata) != "2" {
				t.Errorf("redelivery: uuid %s delivery %s; want %s delivery 2", m.UUID, m.Metadata.Get(bus.DeliveryMetadata), nacked)
			}
		}
		order = append(order, ev.EntityID+" "+string(ev.Type))
		m.Ack()
	}
	// Entity 2 went ahead during the retry delay; entity 1 stayed in order.
	want := "[2 INSERT 1 INSERT 1 UPDATE]"
	if fmt.Sprint(order) != want {
		t.Errorf("handled %v, want %s", order, want)
	}
}

func TestWatchUnwatchMigrateAreIdempotent(t *testing.T) {
	t.Parallel()
	pool, schema := testenv.Postgres(t)
	ctx := context.Background()
	run(t, pool, "CREATE TABLE items (id int PRIMARY KEY, name text)")
	run(t, pool, "CREATE TABLE nokey (name text)")
	tables := []string{schema + ".items"}
	for range 2 {
		if err := capture.Migrate(ctx, pool, schema); err != nil {
			t.Fatalf("Migrate: %v", err)
		}
	}
	for range 2 {
		if err := capture.Watch(ctx, pool, schema, tables, nil); err != nil {
			t.Fatalf("Watch: %v", err)
		}
	}
	count := func() int {
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+schema+".change_log").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	triggers := func() int {
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal", schema+".items").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := triggers(); n != 2 {
		t.Errorf("after watching twice: %d triggers, want 2 (capture and notify)", n)
	}
	run(t, pool, "INSERT INTO items VALUES (1, 'a')")
	if n := count(); n != 1 {
		t.Errorf("one insert on a table watched twice: %d changes, want 1", n)
	}
	for range 2 {
		if err := capture.Unwatch(ctx, pool, schema, append(tables, schema+".missing")); err != nil {
			t.Fatalf("Unwatch: %v", err)
		}
	}
	run(t, pool, "INSERT INTO items VALUES (2, 'b')")
	if n := count(); n != 1 || triggers() != 0 {
		t.Errorf("after unwatch: %d changes and %d triggers, want 1 and 0", n, triggers())
	}
	if err := capture.Watch(ctx, pool, schema, tables, map[string]string{schema + ".items": "Item"}); err != nil {
		t.Fatal(err)
	}
	run(t, pool, "UPDATE items SET name = 'c' WHERE id = 2")
	if n := count(); n != 2 {
		t.Errorf("watched again: %d changes, want 2", n)
	}
	for _, bad := range []string{schema + ".nokey", schema + ".missing"} {
		err := capture.Watch(ctx, pool, schema, []string{bad}, nil)
		if err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("Watch(%s) = %v; want an error naming it", bad, err)
		}
	}
	if err := capture.Migrate(ctx, pool, "bad-schema;"); err == nil {
		t.Error("Migrate accepted a schema that is not a plain identifier")
	}
}

func TestPublisherAppendsEventsOnce(t *testing.T) {
	t.Parallel()
	pool, schema := testenv.Postgres(t)
	ctx := context.Background()
	if err := capture.Migrate(ctx, pool, schema); err != nil {
		t.Fatal(err)
	}
	pub := capture.NewPublisher(pool, schema)
	id := "6f1c1e2a-4a55-4c1b-9f0e-2d7c5b1a0e11"
	body := `{"id":"` + id + `","event_type":"CUSTOM","entity_type":"Invoice","entity_id":"42","data":{"total":99},"user_id":"bob"}`
	for range 2 {
		m := message.NewMessage(id, []byte(body))
		m.Metadata.Set("trace", "abc")
		if err := pub.Publish("events", m); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	if err := pub.Publish("events", message.NewMessage("x", []byte(`{"event_type":"NOPE"}`))); err == nil {
		t.Error("Publish accepted a payload that is not an event")
	}
	ch, _, _ := subscribe(t, pool, config(schema), "g")
	m := next(t, ch)
	ev := decode(t, m)
	m.Ack()
	if m.UUID != id || ev.ID != id || ev.Type != event.Custom || ev.Entity != "Invoice" || ev.EntityID != "42" ||
		ev.Data["total"] != int64(99) || ev.UserID != "bob" || ev.Source != "orders_db" {
		t.Errorf("published event came back as %s: %+v", m.UUID, ev)
	}
	if m.Metadata.Get("trace") != "abc" || m.Metadata.Get(bus.SubjectMetadata) != "orders_db.Invoice.CUSTOM" {
		t.Errorf("metadata = %v", m.Metadata)
	}
	none(t, ch, 10*config(schema).PollInterval)
}

// TestPublisherReplayGetsARowOfItsOwn: a message whose id differs from its
// event's (a dead-letter replay) is appended even though the event is
// already in the change log, and comes back with the event's id in the
// payload and its own id as message UUID.
func TestPublisherReplayGetsARowOfItsOwn(t *testing.T) {
	t.Parallel()
	pool, schema := testenv.Postgres(t)
	ctx := context.Background()
	if err := capture.Migrate(ctx, pool, schema); err != nil {
		t.Fatal(err)
	}
	pub := capture.NewPublisher(pool, schema)
	id := "6f1c1e2a-4a55-4c1b-9f0e-2d7c5b1a0e12"
	replayID := "0d4c9a3e-7b1f-4e55-8a2d-3c6b5e1f0a99"
	body := []byte(`{"id":"` + id + `","event_type":"UPDATE","entity_type":"Invoice","entity_id":"42","data":{"total":99}}`)
	if err := pub.Publish("events", message.NewMessage(id, body)); err != nil {
		t.Fatal(err)
	}
	replay := message.NewMessage(replayID, body)
	replay.Metadata.Set("millrace_observer", "billing")
	if err := pub.Publish("events", replay); err != nil {
		t.Fatal(err)
	}
	ch, _, _ := subscribe(t, pool, config(schema), "g")
	first := next(t, ch)
	first.Ack() // one entity: the next is released after this one settles
	second := next(t, ch)
	second.Ack()
	if first.UUID != id || second.UUID != replayID {
		t.Fatalf("message ids %s, %s; want %s, %s", first.UUID, second.UUID, id, replayID)
	}
	if ev := decode(t, second); ev.ID != id {
		t.Errorf("replayed event id = %s; want the original %s", ev.ID, id)
	}
	if got := second.Metadata.Get("millrace_observer"); got != "billing" {
		t.Errorf("replay metadata lost: %v", second.Metadata)
	}
	if second.Metadata.Get(capture.EventIDMetadata) != "" {
		t.Errorf("internal metadata leaked: %v", second.Metadata)
	}
}

func TestNotifyWakesTheReader(t *testing.T) {
	t.Parallel()
	pool, schema := setup(t)
	ctx := context.Background()
	if err := capture.SetNotify(ctx, pool, schema, true); err != nil {
		t.Fatal(err)
	}
	cfg := config(schema)
	cfg.Notify = true
	cfg.PollInterval = time.Hour // only a notification can wake it
	run(t, pool, "INSERT INTO orders VALUES (1, 'new')")
	ch, _, _ := subscribe(t, pool, cfg, "g")
	ackAll(t, ch, 1) // the first read at start
	// The reader also reads once when its listener connects; after that
	// only notifications wake it.
	for round := range 3 {
		time.Sleep(300 * time.Millisecond)
		from := 2 + 4*round
		run(t, pool, "INSERT INTO orders SELECT g, 'new' FROM generate_series($1::int, $1::int + 3) g", from)
		want := fmt.Sprint([]string{fmt.Sprint(from), fmt.Sprint(from + 1), fmt.Sprint(from + 2), fmt.Sprint(from + 3)})
		if got := ids(ackAll(t, ch, 4)); got != want {
			t.Errorf("round %d: woken read released %s, want %s", round, got, want)
		}
	}
}

// Two subscribers for one (source, group) in one process: one reads, the
// other stands by and takes over when the first stops.
func TestLeaseOneReaderPerGroup(t *testing.T) {
	t.Parallel()
	pool, schema := setup(t)
	cfg := config(schema)
	chA, cancelA, subA := subscribe(t, pool, cfg, "g")
	run(t, pool, "INSERT INTO orders VALUES (1, 'new')")
	ackAll(t, chA, 1)
	chB, _, _ := subscribe(t, pool, cfg, "g")
	chOther, _, _ := subscribe(t, pool, cfg, "other") // another group reads on its own

	run(t, pool, "INSERT INTO orders VALUES (2, 'new')")
	if ev := ackAll(t, chA, 1)[0]; ev.EntityID != "2" {
		t.Fatalf("active reader got %s", ev.EntityID)
	}
	none(t, chB, 10*cfg.PollInterval)
	if got := ids(ackAll(t, chOther, 2)); got != "[1 2]" {
		t.Errorf("other group read %s, want [1 2]", got)
	}

	cancelA()
	_ = subA.Close()
	run(t, pool, "INSERT INTO orders VALUES (3, 'new')")
	if ev := ackAll(t, chB, 1)[0]; ev.EntityID != "3" {
		t.Errorf("standby took over at %s, want 3", ev.EntityID)
	}
}

// Concurrent writers that take an xid first, then update one hot row and
// sometimes roll back: the reader releases every committed update of the
// row, once, in commit order (the counter goes 1, 2, 3...). Reading in xid
// order would release some of them out of order; a "position > last seen"
// cursor would lose some.
func TestConcurrentWritersInCommitOrder(t *testing.T) {
	t.Parallel()
	pool, _ := setup(t)
	ctx := context.Background()
	run(t, pool, "CREATE TABLE scratch (id serial PRIMARY KEY)")
	run(t, pool, "INSERT INTO orders (id, amount) VALUES (0, 0)")
	cfg := config(pool.Config().ConnConfig.RuntimeParams["search_path"])
	ch, _, _ := subscribe(t, pool, cfg, "g")

	const writers, txs = 6, 20
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for range txs {
				err := func() error {
					tx, err := pool.Begin(ctx)
					if err != nil {
						return err
					}
					defer func() { _ = tx.Rollback(ctx) }()
					if _, err := tx.Exec(ctx, "INSERT INTO scratch DEFAULT VALUES"); err != nil { // the xid, first
						return err
					}
					time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
					if _, err := tx.Exec(ctx, "UPDATE orders SET amount = amount + 1 WHERE id = 0"); err != nil {
						return err
					}
					time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
					if rng.IntN(5) == 0 {
						return tx.Rollback(ctx)
					}
					return tx.Commit(ctx)
				}()
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var committed int64
	if err := pool.QueryRow(ctx, "SELECT amount FROM orders WHERE id = 0").Scan(&committed); err != nil {
		t.Fatal(err)
	}
	evs := ackAll(t, ch, int(committed)+1)
	if evs[0].Type != event.Insert {
		t.Fatalf("first event %s, want the INSERT", evs[0].Type)
	}
	for i, ev := range evs[1:] {
		if ev.Type != event.Update || ev.Data["amount"] != int64(i+1) {
			t.Fatalf("update %d: %s with amount %v, want amount %d (events out of commit order or lost)", i+1, ev.Type, ev.Data["amount"], i+1)
		}
	}
	none(t, ch, 10*cfg.PollInterval)
	// How many updates an (xid, position) order would have released
	// before an update that committed earlier.
	var inversions int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM (
		SELECT xid < lag(xid) OVER (ORDER BY position) AS inv FROM `+cfg.Schema+`.change_log WHERE entity_id = '0') s
		WHERE inv`).Scan(&inversions); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d committed updates of %d transactions, in order; %d where xid order is not commit order", committed, writers*txs, inversions)
}
