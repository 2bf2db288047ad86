package wal_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/bus/wal"
	"github.com/millrace/millrace/internal/testenv"
)

// TestBackfillMessagesBecomeReadEvents emits a millrace.backfill logical
// message and checks the READ events: one per row, entity and id from
// the table's key, the row as data, no changes, the observer in the
// metadata, ids from the message's LSN and the row index. Messages for
// another publication, or for none, give no event.
func TestBackfillMessagesBecomeReadEvents(t *testing.T) {
	f := setup(t, "CREATE TABLE orders (id int, region text, status text, PRIMARY KEY (region, id))", "orders")
	ch, _ := f.subscribe(t, f.cfg)
	var lsn string
	err := f.pool.QueryRow(context.Background(), `SELECT pg_logical_emit_message(true, 'millrace.backfill',
		json_build_object('publication', $2::text, 'table', $1::text, 'observer', 'audit', 'rows',
			json_build_array(json_build_object('id', 7, 'region', 'eu', 'status', 'old'), json_build_object('id', 8, 'region', 'us', 'status', null)))::text)::text`,
		f.schema+".orders", f.cfg.Publication).Scan(&lsn)
	if err != nil {
		t.Fatal(err)
	}
	run(t, f.pool, `SELECT pg_logical_emit_message(true, 'other.prefix', 'ignored')`)
	run(t, f.pool, `SELECT pg_logical_emit_message(true, 'millrace.backfill', json_build_object('publication', $2::text, 'table', $1::text, 'observer', '', 'rows', json_build_array(json_build_object('id', 11, 'region', 'eu')))::text)`, f.schema+".orders", f.cfg.Publication+"_other")
	run(t, f.pool, `SELECT pg_logical_emit_message(true, 'millrace.backfill', json_build_object('table', $1::text, 'observer', '', 'rows', json_build_array(json_build_object('id', 12, 'region', 'eu')))::text)`, f.schema+".orders")
	run(t, f.pool, `SELECT pg_logical_emit_message(true, 'millrace.backfill', json_build_object('publication', $2::text, 'table', $1::text, 'observer', '', 'rows', json_build_array(json_build_object('id', 9, 'region', 'eu')))::text)`, f.schema+".orders", f.cfg.Publication)
	msgs := recv(t, ch, 3)
	byID := map[string]map[string]any{}
	for _, m := range msgs {
		var ev map[string]any
		if err := json.Unmarshal(m.Payload, &ev); err != nil {
			t.Fatal(err)
		}
		if ev["event_type"] != "READ" || ev["entity_type"] != "Order" || ev["changes"] != nil || ev["source"] != "orders_db" {
			t.Errorf("READ event = %s", m.Payload)
		}
		obs := m.Metadata.Get(bus.ObserverMetadata)
		switch ev["entity_id"] {
		case "eu:7", "us:8":
			if obs != "audit" {
				t.Errorf("event %v: observer metadata %q, want audit", ev["entity_id"], obs)
			}
		case "eu:9":
			if obs != "" {
				t.Errorf("event eu:9: observer metadata %q, want none", obs)
			}
		default:
			t.Errorf("unexpected entity id in %s", m.Payload)
		}
		byID[ev["entity_id"].(string)] = ev
	}
	if d, _ := json.Marshal(byID["us:8"]["data"]); string(d) != `{"id":8,"region":"us","status":null}` {
		t.Errorf("data of us:8 = %s", d)
	}
	if byID["eu:7"]["id"] == byID["us:8"]["id"] {
		t.Error("two rows of one message share an id")
	}
	// The ids derive from the LSN: a second capture of the same message
	// (another slot) gives the same ids.
	slot2 := f.slot + "_b"
	t.Cleanup(func() { testenv.DropReplication(t, slot2, "") })
	run(t, f.pool, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot2)
	run(t, f.pool, `SELECT pg_logical_emit_message(true, 'millrace.backfill', json_build_object('publication', $2::text, 'table', $1::text, 'observer', '', 'rows', json_build_array(json_build_object('id', 10, 'region', 'eu')))::text)`, f.schema+".orders", f.cfg.Publication)
	idOf := func(b []byte) string {
		var ev struct{ ID string }
		if err := json.Unmarshal(b, &ev); err != nil || ev.ID == "" {
			t.Fatalf("no id in %s (%v)", b, err)
		}
		return ev.ID
	}
	first := idOf(recv(t, ch, 1)[0].Payload)
	cfg2 := f.cfg
	cfg2.Slot = slot2
	ch2, _ := f.subscribe(t, cfg2)
	if again := idOf(recv(t, ch2, 1)[0].Payload); again != first {
		t.Errorf("the same backfill row has id %s in one slot and %s in another", first, again)
	}
}

// TestAddedColumnTOASTAndIdentityDefault changes a table while it is
// captured: an added column appears in the next events; an UPDATE that
// leaves a TOASTed column unchanged keeps it in data with REPLICA
// IDENTITY FULL, and leaves it out with DEFAULT, where UPDATE has no
// changes and DELETE only the key.
func TestAddedColumnTOASTAndIdentityDefault(t *testing.T) {
	f := setup(t, "CREATE TABLE orders (id int PRIMARY KEY, status text, big text); CREATE TABLE plain (id int PRIMARY KEY, status text, big text)", "orders")
	ch, _ := f.subscribe(t, f.cfg)
	var big string // incompressible, so it is stored out of line (TOAST)
	if err := f.pool.QueryRow(context.Background(), "SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 4000)").Scan(&big); err != nil {
		t.Fatal(err)
	}
	run(t, f.pool, "INSERT INTO orders VALUES (1, 'new', $1)", big)
	run(t, f.pool, "ALTER TABLE orders ADD COLUMN qty int DEFAULT 0")
	run(t, f.pool, "UPDATE orders SET status = 'paid', qty = 2 WHERE id = 1")
	msgs := recv(t, ch, 2)
	var upd map[string]any
	if err := json.Unmarshal(msgs[1].Payload, &upd); err != nil {
		t.Fatal(err)
	}
	data := upd["data"].(map[string]any)
	if data["qty"] != float64(2) || data["big"] != big {
		t.Errorf("UPDATE data after ADD COLUMN: qty %v, big %d bytes; want 2 and the TOASTed value", data["qty"], len(fmt.Sprint(data["big"])))
	}
	if ch := upd["changes"].(map[string]any); ch["big"] != nil || ch["qty"] == nil || ch["status"] == nil {
		t.Errorf("changes = %v, want status and qty", ch)
	}

	run(t, f.pool, "ALTER TABLE orders REPLICA IDENTITY DEFAULT")
	run(t, f.pool, "UPDATE orders SET status = 'shipped' WHERE id = 1")
	run(t, f.pool, "DELETE FROM orders WHERE id = 1")
	msgs = recv(t, ch, 2)
	var u, d map[string]any
	_ = json.Unmarshal(msgs[0].Payload, &u)
	_ = json.Unmarshal(msgs[1].Payload, &d)
	if _, ok := u["data"].(map[string]any)["big"]; ok || u["changes"] != nil || u["data"].(map[string]any)["status"] != "shipped" {
		t.Errorf("UPDATE with identity DEFAULT = %s; want no big, no changes", msgs[0].Payload)
	}
	if dd, _ := json.Marshal(d["data"]); d["event_type"] != "DELETE" || d["entity_id"] != "1" || !bytes.Contains(dd, []byte(`"id":1`)) || bytes.Contains(dd, []byte("status\":\"shipped")) {
		t.Errorf("DELETE with identity DEFAULT = %s; want the key only", msgs[1].Payload)
	}
}

// TestStandbyTakesOver runs two captures of one slot: one streams, the
// other stands by (PostgreSQL allows one walsender per slot); when the
// active one stops with changes unacked, the standby continues and every
// change is acked by one of them.
func TestStandbyTakesOver(t *testing.T) {
	f := setup(t, "CREATE TABLE orders (id int PRIMARY KEY, status text)", "orders")
	var logs testenv.LogBuffer
	cfg := f.cfg
	chA, stopA := f.subscribe(t, cfg)
	waitFor(t, "capture A streams", func() bool { return active(t, f.pool, f.slot) })
	b := wal.NewSubscriber(f.pool, cfg, nil, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	chB, err := b.Subscribe(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	waitFor(t, "capture B stands by", func() bool { return strings.Contains(logs.String(), "slot in use") })

	run(t, f.pool, "INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 200) g")
	acked := map[string]bool{}
	for _, m := range recv(t, chA, 50) {
		acked[decode(t, m).EntityID] = true
	}
	// A dies with the rest of the transaction unacked.
	go func() {
		for m := range chA {
			m.Nack()
		}
	}()
	stopA()
	run(t, f.pool, "INSERT INTO orders SELECT g, 'later' FROM generate_series(201, 300) g")
	deadline := time.After(wait)
	for len(acked) < 300 {
		select {
		case m := <-chB:
			m.Ack()
			acked[decode(t, m).EntityID] = true
		case <-deadline:
			t.Fatalf("after the takeover %d of 300 rows acked", len(acked))
		}
	}
	if strings.Contains(logs.String(), "level=ERROR") || strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("standing by logged above info:\n%s", logs.String())
	}
}

func active(t *testing.T, pool *pgxpool.Pool, slot string) bool {
	var on bool
	if err := pool.QueryRow(context.Background(), "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&on); err != nil {
		t.Fatal(err)
	}
	return on
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(wait); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting until %s", what)
}

// TestRetainedWALGaugeAndWarning checks the gauge of the WAL the slot
// retains and the warning past max_retained_wal.
func TestRetainedWALGaugeAndWarning(t *testing.T) {
	f := setup(t, "CREATE TABLE orders (id int PRIMARY KEY, status text)", "orders")
	run(t, f.pool, "INSERT INTO orders SELECT g, 'new' FROM generate_series(1, 100) g")
	var logs testenv.LogBuffer
	m := wal.NewMetrics()
	cfg := f.cfg
	cfg.MaxRetainedWAL, cfg.RetainedInterval = 1, 50*time.Millisecond
	sub := wal.NewSubscriber(f.pool, cfg, m, slog.New(slog.NewTextHandler(&logs, nil)))
	t.Cleanup(func() { _ = sub.Close() })
	if _, err := sub.Subscribe(context.Background(), ""); err != nil { // nothing acks: the slot holds on
		t.Fatal(err)
	}
	waitFor(t, "the retained-WAL warning", func() bool { return strings.Contains(logs.String(), "retains more WAL than max_retained_wal") })
	if v := testutil.ToFloat64(m.Retained.WithLabelValues("orders_db")); v <= 0 {
		t.Errorf("millrace_capture_wal_retained_bytes = %v, want > 0", v)
	}
}

// TestBadInput: each refusal names its fix, and nothing is created.
func TestBadInput(t *testing.T) {
	ctx := context.Background()
	t.Run("table without primary key", func(t *testing.T) {
		pool, schema := testenv.Postgres(t)
		slot, pub := testenv.ReplicationNames(t)
		run(t, pool, "CREATE TABLE nopk (a int, b text)")
		err := wal.Setup(ctx, pool, wal.SetupConfig{Slot: slot, Publication: pub, Tables: []string{schema + ".nopk"}, ReplicaIdentityFull: true})
		if err == nil || !strings.Contains(err.Error(), "has no primary key") || !strings.Contains(err.Error(), "REPLICA IDENTITY FULL") {
			t.Fatalf("Setup = %v; want the missing primary key and the fix", err)
		}
		assertNothingCreated(t, pool, slot, pub)
		// With REPLICA IDENTITY FULL the table is accepted.
		run(t, pool, "ALTER TABLE nopk REPLICA IDENTITY FULL")
		if err := wal.Setup(ctx, pool, wal.SetupConfig{Slot: slot, Publication: pub, Tables: []string{schema + ".nopk"}}); err != nil {
			t.Fatalf("Setup with REPLICA IDENTITY FULL: %v", err)
		}
	})
	t.Run("slot of another plugin", func(t *testing.T) {
		pool, schema := testenv.Postgres(t)
		slot, pub := testenv.ReplicationNames(t)
		run(t, pool, "CREATE TABLE orders (id int PRIMARY KEY)")
		run(t, pool, "SELECT pg_create_logical_replication_slot($1, 'test_decoding')", slot)
		err := wal.Setup(ctx, pool, wal.SetupConfig{Slot: slot, Publication: pub, Tables: []string{schema + ".orders"}})
		if !errors.Is(err, wal.ErrSlotPlugin) || !strings.Contains(err.Error(), "pg_drop_replication_slot") {
			t.Fatalf("Setup = %v; want ErrSlotPlugin naming the fix", err)
		}
		if err := wal.Check(ctx, pool, slot, pub); !errors.Is(err, wal.ErrSlotPlugin) {
			t.Fatalf("Check = %v; want ErrSlotPlugin", err)
		}
		var pubs int
		_ = pool.QueryRow(ctx, "SELECT count(*) FROM pg_publication WHERE pubname = $1", pub).Scan(&pubs)
		if pubs != 0 {
			t.Error("the publication was created before the slot was refused")
		}
	})
	t.Run("role without REPLICATION", func(t *testing.T) {
		pool, schema := testenv.Postgres(t)
		slot, pub := testenv.ReplicationNames(t)
		role := "r_" + schema
		run(t, pool, "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN NOREPLICATION")
		t.Cleanup(func() {
			run(t, pool, "DROP OWNED BY "+pgx.Identifier{role}.Sanitize()+"; DROP ROLE "+pgx.Identifier{role}.Sanitize())
		})
		run(t, pool, "CREATE TABLE orders (id int PRIMARY KEY)")
		run(t, pool, "ALTER TABLE orders OWNER TO "+pgx.Identifier{role}.Sanitize())
		rp := rolePool(t, role, schema)
		err := wal.Setup(ctx, rp, wal.SetupConfig{Slot: slot, Publication: pub, Tables: []string{schema + ".orders"}})
		if err == nil || !strings.Contains(err.Error(), "REPLICATION") || !strings.Contains(err.Error(), "ALTER ROLE") {
			t.Fatalf("Setup = %v; want the missing REPLICATION attribute and the fix", err)
		}
		assertNothingCreated(t, pool, slot, pub)
	})
	t.Run("table owned by another role", func(t *testing.T) {
		pool, schema := testenv.Postgres(t)
		slot, pub := testenv.ReplicationNames(t)
		role := "r_" + schema
		run(t, pool, "CREATE ROLE "+pgx.Identifier{role}.Sanitize()+" LOGIN REPLICATION")
		t.Cleanup(func() {
			run(t, pool, "DROP OWNED BY "+pgx.Identifier{role}.Sanitize()+"; DROP ROLE "+pgx.Identifier{role}.Sanitize())
		})
		run(t, pool, "GRANT USAGE, CREATE ON SCHEMA "+pgx.Identifier{schema}.Sanitize()+" TO "+pgx.Identifier{role}.Sanitize())
		run(t, pool, "GRANT CREATE ON DATABASE test TO "+pgx.Identifier{role}.Sanitize())
		run(t, pool, "CREATE TABLE orders (id int PRIMARY KEY)")
		rp := rolePool(t, role, schema)
		err := wal.Setup(ctx, rp, wal.SetupConfig{Slot: slot, Publication: pub, Tables: []string{schema + ".orders"}, ReplicaIdentityFull: true})
		if err == nil || !strings.Contains(err.Error(), "must own") {
			t.Fatalf("Setup = %v; want the missing ownership and the fix", err)
		}
	})
	t.Run("wal_level", func(t *testing.T) {
		// The test server runs with wal_level = logical (test/services.sh),
		// which Check accepts; the refusal of another level is
		// TestWALLevel's, since the level cannot change without a restart.
		pool, _ := testenv.Postgres(t)
		if err := wal.CheckServer(ctx, pool); err != nil {
			t.Fatalf("CheckServer on a wal_level = logical server: %v", err)
		}
	})
	t.Run("slot missing at start", func(t *testing.T) {
		pool, _ := testenv.Postgres(t)
		slot, pub := testenv.ReplicationNames(t)
		if err := wal.Check(ctx, pool, slot, pub); err == nil || !strings.Contains(err.Error(), "millrace watch") {
			t.Fatalf("Check = %v; want the missing slot and `millrace watch`", err)
		}
	})
}

func rolePool(t *testing.T, role, schema string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testenv.PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.User = role
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func assertNothingCreated(t *testing.T, pool *pgxpool.Pool, slot, pub string) {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1) + (SELECT count(*) FROM pg_publication WHERE pubname = $2)", slot, pub).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("a refused setup left the slot or publication behind")
	}
}
