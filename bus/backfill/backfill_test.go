package backfill_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/bus/backfill"
	"github.com/millrace/millrace/bus/capture"
	"github.com/millrace/millrace/internal/testenv"
)

// setup creates the capture schema in a schema of the test's own, a
// table with ddl, fills it with rows, and watches it.
func setup(t *testing.T, ddl, fill string) (*pgxpool.Pool, string) {
	t.Helper()
	pool, schema := testenv.Postgres(t)
	ctx := context.Background()
	if err := capture.Migrate(ctx, pool, schema); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{ddl, fill} {
		if q == "" {
			continue
		}
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	return pool, schema
}

func watch(t *testing.T, pool *pgxpool.Pool, schema, table string) {
	t.Helper()
	if err := capture.Watch(context.Background(), pool, schema, []string{schema + "." + table}, nil); err != nil {
		t.Fatal(err)
	}
}

func config(schema, table string) backfill.Config {
	return backfill.Config{
		Source: "db", Schema: schema, Table: schema + "." + table,
		Emitter: backfill.NewTriggerEmitter(schema), CheckTrigger: true,
	}
}

// logged is one change-log row.
type logged struct {
	pos      int64
	id       string
	op       string
	entityID string
	v        int64
	metadata map[string]string
}

func changeLog(t *testing.T, pool *pgxpool.Pool, schema string) []logged {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT position, id::text, op, entity_type, entity_id,
		coalesce((after_image->>'v')::bigint, -1), coalesce(metadata, '{}') FROM `+schema+`.change_log ORDER BY position`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []logged
	for rows.Next() {
		var l logged
		var entity string
		var md []byte
		if err := rows.Scan(&l.pos, &l.id, &l.op, &entity, &l.entityID, &l.v, &md); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(md, &l.metadata); err != nil {
			t.Fatal(err)
		}
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestWritersDuringBackfill updates rows while the backfill pages over
// them, some transactions locking several rows against the key order,
// and checks the change log in position order, the order the capture
// reader releases it in: per row, the versions never go down (no READ
// image older than a change before it), the last event carries the
// row's final version, and every row was read once.
func TestWritersDuringBackfill(t *testing.T) {
	const n = 2000
	pool, schema := setup(t, "CREATE TABLE items (id int PRIMARY KEY, v bigint NOT NULL)",
		fmt.Sprintf("INSERT INTO items SELECT x, 0 FROM generate_series(1, %d) x", n))
	watch(t, pool, schema, "items")
	ctx := context.Background()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var updates atomic.Int64
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				// Two rows per transaction, the higher key first: a writer
				// that locks against the key order can deadlock with a
				// page, which must then be tried again.
				a, b := 1+rng.IntN(n), 1+rng.IntN(n)
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					for _, id := range []int{max(a, b), min(a, b)} {
						if _, err := tx.Exec(ctx, "UPDATE items SET v = v + 1 WHERE id = $1", id); err != nil {
							return err
						}
					}
					return nil
				})
				if err == nil {
					updates.Add(2)
				}
			}
		}()
	}
	cfg := config(schema, "items")
	cfg.Page = 50
	res, err := backfill.Run(ctx, pool, cfg)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if res.Rows != n || res.Emitted != n || res.FinishedAt.IsZero() {
		t.Fatalf("result %+v; want %d rows, finished", res, n)
	}
	if updates.Load() == 0 {
		t.Fatal("no update committed during the backfill: the test did not test anything")
	}
	final := map[string]int64{}
	rows, err := pool.Query(ctx, "SELECT id::text, v FROM items")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		var v int64
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		final[id] = v
	}
	rows.Close()

	last := map[string]int64{}
	reads := map[string]int{}
	readAfterUpdate := 0
	for _, l := range changeLog(t, pool, schema) {
		prev, seen := last[l.entityID]
		if seen && l.v < prev {
			t.Fatalf("row %s: %s at position %d carries version %d after version %d", l.entityID, l.op, l.pos, l.v, prev)
		}
		switch l.op {
		case "READ":
			reads[l.entityID]++
			if seen {
				readAfterUpdate++
			}
		case "UPDATE":
		default:
			t.Fatalf("unexpected %s at position %d", l.op, l.pos)
		}
		last[l.entityID] = l.v
	}
	for id, v := range final {
		if reads[id] != 1 {
			t.Errorf("row %s read %d times, want once", id, reads[id])
		}
		if last[id] != v {
			t.Errorf("row %s: last event carries version %d, the row is at %d", id, last[id], v)
		}
	}
	t.Logf("%d rows, %d row updates during the backfill, %d READs after an UPDATE of their row", n, updates.Load(), readAfterUpdate)
}

// TestResume stops a backfill between pages, runs it again, and checks
// that it went on from its cursor: every row read exactly once, with
// the ids the run derives; then that a finished backfill is reported,
// and started over only with Restart.
func TestResume(t *testing.T) {
	const n, page = 95, 10
	pool, schema := setup(t, "CREATE TABLE items (id int PRIMARY KEY, v bigint NOT NULL)",
		fmt.Sprintf("INSERT INTO items SELECT x, 0 FROM generate_series(1, %d) x", n))
	watch(t, pool, schema, "items")

	ctx, cancel := context.WithCancel(context.Background())
	cfg := config(schema, "items")
	cfg.Page = page
	pages := 0
	cfg.OnPage = func(backfill.Progress) {
		if pages++; pages == 3 {
			cancel()
		}
	}
	res, err := backfill.Run(ctx, pool, cfg)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("first run: %v; want context.Canceled", err)
	}
	if res.Rows != 3*page || string(res.Cursor) != `{"id":30}` {
		t.Fatalf("first run stopped at %d rows, cursor %s; want 30 rows, cursor {\"id\":30}", res.Rows, res.Cursor)
	}
	var stored string
	if err := pool.QueryRow(context.Background(), "SELECT cursor::text FROM "+schema+".backfills").Scan(&stored); err != nil || stored != `{"id": 30}` {
		t.Fatalf("stored cursor %q (%v); want {\"id\": 30}", stored, err)
	}

	cfg.OnPage = nil
	res2, err := backfill.Run(context.Background(), pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !res2.Resumed || res2.RunID != res.RunID || res2.Rows != n || res2.Emitted != n-3*page {
		t.Fatalf("second run %+v; want resumed run %s, %d rows, %d emitted", res2, res.RunID, n, n-3*page)
	}
	reads := map[string]int{}
	for _, l := range changeLog(t, pool, schema) {
		if l.op != "READ" {
			continue
		}
		reads[l.entityID]++
		if want := backfill.EventID(res.RunID, l.entityID).String(); l.id != want {
			t.Errorf("row %s has event id %s, want %s", l.entityID, l.id, want)
		}
	}
	for id := 1; id <= n; id++ {
		if c := reads[fmt.Sprint(id)]; c != 1 {
			t.Errorf("row %d read %d times, want once", id, c)
		}
	}

	res3, err := backfill.Run(context.Background(), pool, cfg)
	if err != nil || !res3.AlreadyFinished || res3.Emitted != 0 || res3.Rows != n {
		t.Fatalf("third run %+v (%v); want already finished with %d rows", res3, err, n)
	}
	cfg.Restart = true
	res4, err := backfill.Run(context.Background(), pool, cfg)
	if err != nil || res4.Resumed || res4.Emitted != n || res4.RunID == res.RunID {
		t.Fatalf("restarted run %+v (%v); want %d rows under a new run id", res4, err, n)
	}
	if got := len(changeLog(t, pool, schema)); got != 2*n {
		t.Errorf("change log holds %d rows after a restart, want %d", got, 2*n)
	}
}

// TestCompositeKeyFilterObserver pages a table with a two-column key
// through a filter, and checks the entity ids against the trigger's,
// the key order, and the observer in the rows' metadata.
func TestCompositeKeyFilterObserver(t *testing.T) {
	pool, schema := setup(t, `CREATE TABLE lines (o int, name text, v bigint NOT NULL DEFAULT 0, PRIMARY KEY (o, name))`,
		`INSERT INTO lines (o, name) SELECT o, n FROM generate_series(1, 7) o, unnest(ARRAY['b', 'a:x', 'c']) n`)
	watch(t, pool, schema, "lines")
	ctx := context.Background()
	cfg := config(schema, "lines")
	cfg.Page = 4
	cfg.Filter = "o % 2 = 1 -- odd orders"
	cfg.Observer = "audit"
	res, err := backfill.Run(ctx, pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Rows != 12 {
		t.Fatalf("%d rows, want 12 (orders 1, 3, 5, 7 × 3 lines)", res.Rows)
	}
	if _, err := pool.Exec(ctx, "UPDATE lines SET v = 1 WHERE o = 3 AND name = 'a:x'"); err != nil {
		t.Fatal(err)
	}
	var got []string
	var update string
	for _, l := range changeLog(t, pool, schema) {
		if l.op == "UPDATE" {
			update = l.entityID
			continue
		}
		got = append(got, l.entityID)
		if l.metadata[bus.ObserverMetadata] != "audit" {
			t.Errorf("READ of %s has metadata %v, want %s = audit", l.entityID, l.metadata, bus.ObserverMetadata)
		}
	}
	var want []string
	for _, o := range []int{1, 3, 5, 7} {
		for _, n := range []string{"a:x", "b", "c"} {
			want = append(want, fmt.Sprintf("%d:%s", o, n))
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("READ entity ids in position order:\n got %v\nwant %v", got, want)
	}
	if update != "3:a:x" {
		t.Errorf("the trigger wrote entity id %q for the row the backfill called 3:a:x", update)
	}
}

// TestBadInput checks each mistake gets an error naming it, wrapping
// ErrInvalid.
func TestBadInput(t *testing.T) {
	pool, schema := setup(t, "CREATE TABLE items (id int PRIMARY KEY, v int)", "INSERT INTO items VALUES (1, 1)")
	ctx := context.Background()
	for _, q := range []string{"CREATE TABLE nokey (v int)", "CREATE TABLE unwatched (id int PRIMARY KEY)"} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	watch(t, pool, schema, "items")
	for _, tc := range []struct {
		name, table, filter, want string
	}{
		{"missing table", "nope", "", "table " + schema + ".nope does not exist"},
		{"no primary key", "nokey", "", "table " + schema + ".nokey has no primary key"},
		{"no trigger", "unwatched", "", "table " + schema + ".unwatched has no capture trigger of schema " + schema + ": run millrace watch first"},
		{"bad filter", "items", "nosuchcolumn > 1", `--where "nosuchcolumn > 1" on table ` + schema + `.items: column "nosuchcolumn" does not exist`},
		{"filter syntax", "items", "v >", `--where "v >" on table ` + schema + `.items: syntax error`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config(schema, tc.table)
			cfg.Filter = tc.filter
			_, err := backfill.Run(ctx, pool, cfg)
			if !errors.Is(err, backfill.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v; want ErrInvalid with %q", err, tc.want)
			}
		})
	}
}

// TestOneRunAtATime checks that a second process cannot run the same
// backfill while the first does.
func TestOneRunAtATime(t *testing.T) {
	pool, schema := setup(t, "CREATE TABLE items (id int PRIMARY KEY, v int)", "INSERT INTO items SELECT x, 0 FROM generate_series(1, 20) x")
	watch(t, pool, schema, "items")
	cfg := config(schema, "items")
	cfg.Page = 5
	var second error
	cfg.OnPage = func(backfill.Progress) {
		if second == nil {
			other := cfg
			other.OnPage = nil
			_, second = backfill.Run(context.Background(), pool, other)
		}
	}
	if _, err := backfill.Run(context.Background(), pool, cfg); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(second, backfill.ErrRunning) {
		t.Fatalf("second run: %v; want ErrRunning", second)
	}
}

// TestRate checks that --rate bounds the rows per second.
func TestRate(t *testing.T) {
	pool, schema := setup(t, "CREATE TABLE items (id int PRIMARY KEY, v int)", "INSERT INTO items SELECT x, 0 FROM generate_series(1, 30) x")
	watch(t, pool, schema, "items")
	cfg := config(schema, "items")
	cfg.Rate = 20 // a burst of one page (20 rows), then 10 more rows: 0.5 s at least
	start := time.Now()
	res, err := backfill.Run(context.Background(), pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); res.Rows != 30 || took < 450*time.Millisecond {
		t.Fatalf("%d rows in %s; want 30 rows in at least 0.5 s at 20/s", res.Rows, took)
	}
}

// TestWALMessage runs pages through the WAL emitter and reads them back
// from a logical replication slot of the test's own with test_decoding:
// one transactional message per page with the agreed prefix and content.
// Logical decoding reads every change of its database, and fails on the
// tables that other tests create and drop meanwhile, so the test works in
// a database of its own.
func TestWALMessage(t *testing.T) {
	pool, schema := privateDatabase(t)
	ctx := context.Background()
	if err := capture.Migrate(ctx, pool, schema); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"CREATE TABLE " + schema + ".items (id int PRIMARY KEY, name text, tags text[])",
		"INSERT INTO " + schema + `.items VALUES (1, 'a', '{x}'), (2, 'b"q', NULL), (3, 'c', '{}')`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	slot := schema + "_slot"
	if _, err := pool.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'test_decoding')", slot); err != nil {
		t.Fatalf("create slot (wal_level must be logical): %v", err)
	}
	t.Cleanup(func() {
		if _, err := pool.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", slot); err != nil {
			t.Errorf("drop slot %s: %v", slot, err)
		}
	})
	cfg := config(schema, "items")
	cfg.Emitter, cfg.CheckTrigger = backfill.WALEmitter{Publication: schema + "_pub"}, false
	cfg.Page = 2
	cfg.Observer = "audit"
	if _, err := backfill.Run(ctx, pool, cfg); err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL) WHERE data LIKE 'message:%'", slot)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	// test_decoding: "message: transactional: 1 prefix: P, sz: N content:C"
	var pages []backfill.Message
	for _, m := range msgs {
		head, content, ok := strings.Cut(m, " content:")
		if !ok || !strings.HasPrefix(head, "message: transactional: 1 prefix: "+backfill.MessagePrefix+", sz: ") {
			t.Fatalf("decoded message %q; want a transactional one with prefix %s", m, backfill.MessagePrefix)
		}
		var p backfill.Message
		if err := json.Unmarshal([]byte(content), &p); err != nil {
			t.Fatalf("content %q: %v", content, err)
		}
		pages = append(pages, p)
	}
	want := []backfill.Message{
		{Publication: schema + "_pub", Table: schema + ".items", Observer: "audit", Rows: []json.RawMessage{
			json.RawMessage(`{"id":1,"name":"a","tags":["x"]}`), json.RawMessage(`{"id":2,"name":"b\"q","tags":null}`)}},
		{Publication: schema + "_pub", Table: schema + ".items", Observer: "audit", Rows: []json.RawMessage{json.RawMessage(`{"id":3,"name":"c","tags":[]}`)}},
	}
	got, _ := json.Marshal(pages)
	exp, _ := json.Marshal(want)
	if string(got) != string(exp) {
		t.Fatalf("decoded pages\n got %s\nwant %s", got, exp)
	}
}

// privateDatabase creates a database of the test's own with a schema of
// the same name, and drops it when the test ends.
func privateDatabase(t *testing.T) (*pgxpool.Pool, string) {
	t.Helper()
	ctx := context.Background()
	name := testenv.Name(t)
	admin, err := pgx.Connect(ctx, testenv.PostgresURL())
	if err != nil {
		t.Fatalf("PostgreSQL at %s: %v", testenv.PostgresURL(), err)
	}
	defer func() { _ = admin.Close(ctx) }()
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(ctx, testenv.PostgresURL())
		if err != nil {
			t.Errorf("drop database %s: %v", name, err)
			return
		}
		defer func() { _ = c.Close(ctx) }()
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	cfg, err := pgxpool.ParseConfig(testenv.PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.Database = name
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+name); err != nil {
		t.Fatal(err)
	}
	return pool, name
}
