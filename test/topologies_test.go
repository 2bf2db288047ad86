package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/internal/e2e"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/multidb"
	"github.com/millrace/millrace/topologies/nats"
	"github.com/millrace/millrace/topologies/postgres"
	"github.com/millrace/millrace/topologies/redis"
)

func TestMain(m *testing.M) { e2e.Main(m) }

// examples are the example configs of the topologies of this suite.
var examples = []string{"postgres", "redis", "nats", "multidb"}

func examplePath(name string) string { return filepath.Join("..", "topologies", name+".toml") }

// TestExampleConfigsAreValid loads each example config and checks it
// against a registry holding its topology, as `millrace validate` does,
// and runs `millrace validate` on it.
func TestExampleConfigsAreValid(t *testing.T) {
	reg := topologies.NewRegistry()
	for _, register := range []func(*topologies.Registry) error{postgres.Register, redis.Register, nats.Register, multidb.Register} {
		if err := register(reg); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range examples {
		t.Run(name, func(t *testing.T) {
			cfg, err := config.Load(examplePath(name))
			if err != nil {
				t.Fatalf("config.Load: %v", err)
			}
			if cfg.Topology != name {
				t.Errorf("topology = %q, want %q", cfg.Topology, name)
			}
			if err := reg.Check(cfg); err != nil {
				t.Errorf("registry check: %v", err)
			}
			for _, s := range cfg.Sources {
				if s.PostgresURLEnv == "" || s.PostgresURL != "" {
					t.Errorf("source %s: the URL must come from postgres_url_env", s.Name)
				}
			}
			out, err := exec.Command(e2e.Binary(t), "validate", examplePath(name)).CombinedOutput()
			if err != nil {
				t.Errorf("millrace validate: %v\n%s", err, out)
			}
		})
	}
}

// proc is one millrace process of these tests.
type proc struct {
	*e2e.Process
	name string
	addr string
}

// start runs `millrace run -c cfgPath args...` with env added to the
// test's environment, on a free HTTP port, logging JSON, and waits until
// it is ready.
func start(t *testing.T, name, cfgPath string, env []string, args ...string) *proc {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	// The example configs name an ingest token (MILLRACE_INGEST_TOKEN);
	// these tests capture and do not ingest, but millrace run needs it set.
	env = append(append(os.Environ(), env...), "MILLRACE_HTTP__ADDR="+addr, "MILLRACE_LOG__FORMAT=json",
		"MILLRACE_LOG__LEVEL=info", "MILLRACE_ROUTER__SHUTDOWN_TIMEOUT=5s", "MILLRACE_INGEST_TOKEN=topologies-test")
	p := &proc{Process: e2e.NewProcess(t, name, e2e.Binary(t), append([]string{"run", "-c", cfgPath}, args...), env),
		name: name, addr: addr}
	p.Start()
	p.WaitReady("http://"+addr+"/readyz", 60*time.Second)
	return p
}

// stop sends SIGTERM and expects a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	if code := p.Terminate(30 * time.Second); code != 0 {
		t.Errorf("%s: after SIGTERM the process exited with %d, want 0", p.name, code)
	}
}

// action is one run of the examples' log action, read from its JSON log
// line: "<TYPE> <entity> <id> from <source>: data=<json> changes=<json>".
type action struct {
	EventID    string    `json:"event_id"`
	EventType  string    `json:"event_type"`
	EntityType string    `json:"entity_type"`
	EntityID   string    `json:"entity_id"`
	Msg        string    `json:"msg"`
	Time       time.Time `json:"time"`
	Source     string
	Data       map[string]any
	Changes    map[string]any
}

func parseAction(line string) (action, bool) {
	var a action
	if json.Unmarshal([]byte(line), &a) != nil || a.EventID == "" || a.EventType == "" {
		return a, false
	}
	head, rest, ok := strings.Cut(a.Msg, ": data=")
	if !ok {
		return a, false
	}
	data, changes, ok := strings.Cut(rest, " changes=")
	if !ok {
		return a, false
	}
	if _, src, ok := strings.Cut(head, " from "); ok {
		a.Source = src
	}
	if json.Unmarshal([]byte(data), &a.Data) != nil || json.Unmarshal([]byte(changes), &a.Changes) != nil {
		return a, false
	}
	return a, true
}

func (p *proc) actions() []action {
	var out []action
	for _, l := range p.Logs() {
		if a, ok := parseAction(l.Raw); ok {
			out = append(out, a)
		}
	}
	return out
}

// waitActions waits until procs logged at least n actions that match,
// together, and returns all the matching ones.
func waitActions(t *testing.T, n int, match func(action) bool, procs ...*proc) []action {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		var got []action
		for _, p := range procs {
			for _, a := range p.actions() {
				if match(a) {
					got = append(got, a)
				}
			}
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d actions within 90s: %+v", len(got), n, got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// exampleCopy writes the example config name with each
// `schema = "millrace"` line of its [[sources]], in order, set to the
// given capture schemas, and returns its path.
func exampleCopy(t *testing.T, name string, schemas ...string) string {
	t.Helper()
	b, err := os.ReadFile(examplePath(name))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	const line = `schema = "millrace"`
	if n := strings.Count(text, line); n != len(schemas) {
		t.Fatalf("%s has %d %q lines, want %d", name, n, line, len(schemas))
	}
	for _, s := range schemas {
		text = strings.Replace(text, line, fmt.Sprintf("schema = %q", s), 1)
	}
	path := filepath.Join(t.TempDir(), name+".toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// database is one test database: a schema of its own on the test server
// holding a watched table, which is also the source's capture schema.
type database struct {
	pool   *pgxpool.Pool
	schema string
	url    string
}

func newDatabase(t *testing.T, table string) database {
	t.Helper()
	pool, schema := testenv.Postgres(t)
	if _, err := pool.Exec(context.Background(), "CREATE TABLE "+table+" (id bigint PRIMARY KEY, status text NOT NULL, total int NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	return database{pool: pool, schema: schema, url: testenv.PostgresSchemaURL(t, schema)}
}

func (d database) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := d.pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// natsEnv points the nats section at a stream, subjects and consumer of
// the test's own.
func natsEnv(t *testing.T) []string {
	_, _, prefix := testenv.NATS(t)
	return []string{
		"MILLRACE_NATS__URL=" + testenv.NATSURL(),
		"MILLRACE_NATS__STREAM=" + strings.ToUpper(prefix),
		"MILLRACE_NATS__SUBJECT_PREFIX=" + prefix,
		"MILLRACE_NATS__CONSUMER=" + prefix,
	}
}

// redisEnv points the redis section at the test server under a key
// prefix of the test's own.
func redisEnv(t *testing.T) []string {
	_, prefix := testenv.Redis(t)
	return []string{"MILLRACE_REDIS__URL=" + testenv.RedisURL(), "MILLRACE_REDIS__KEY_PREFIX=" + prefix}
}

// crud inserts, updates and deletes one row of table in d and checks the
// three actions procs ran for it: type, data and changes, in order.
func crud(t *testing.T, d database, table, entity, source string, id int, procs ...*proc) {
	t.Helper()
	d.exec(t, "INSERT INTO "+table+" (id, status, total) VALUES ($1, 'new', 10)", id)
	d.exec(t, "UPDATE "+table+" SET status = 'paid' WHERE id = $1", id)
	d.exec(t, "DELETE FROM "+table+" WHERE id = $1", id)
	eid := fmt.Sprint(id)
	got := waitActions(t, 3, func(a action) bool { return a.EntityType == entity && a.EntityID == eid }, procs...)
	row := func(status string) map[string]any {
		return map[string]any{"id": float64(id), "status": status, "total": float64(10)}
	}
	want := []struct {
		typ     string
		data    map[string]any
		changes map[string]any
	}{
		{"INSERT", row("new"), nil},
		{"UPDATE", row("paid"), map[string]any{"status": map[string]any{"old": "new", "new": "paid"}}},
		{"DELETE", row("paid"), nil},
	}
	if len(got) != len(want) {
		t.Fatalf("%s %s: %d actions, want %d: %+v", entity, eid, len(got), len(want), got)
	}
	for i, w := range want {
		a := got[i]
		if a.EventType != w.typ || !reflect.DeepEqual(a.Data, w.data) || !reflect.DeepEqual(a.Changes, w.changes) || a.Source != source {
			t.Errorf("%s %s action %d: %s from %s data=%v changes=%v; want %s from %s data=%v changes=%v",
				entity, eid, i, a.EventType, a.Source, a.Data, a.Changes, w.typ, source, w.data, w.changes)
		}
	}
}

func TestPostgresTopology(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, "orders")
	cfg := exampleCopy(t, "postgres", db.schema)
	p := start(t, "postgres", cfg, []string{"ORDERS_DB_URL=" + db.url})
	crud(t, db, "orders", "Order", "orders_db", 1, p)
	p.stop(t)
}

func TestRedisTopology(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, "orders")
	cfg := exampleCopy(t, "redis", db.schema)
	p := start(t, "redis", cfg, append(redisEnv(t), "ORDERS_DB_URL="+db.url))
	crud(t, db, "orders", "Order", "orders_db", 1, p)
	p.stop(t)
}

func TestNATSTopology(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, "orders")
	cfg := exampleCopy(t, "nats", db.schema)
	env := append(append(natsEnv(t), redisEnv(t)...), "ORDERS_DB_URL="+db.url)
	p := start(t, "nats", cfg, env)
	crud(t, db, "orders", "Order", "orders_db", 1, p)
	p.stop(t)
}

// TestEmbeddedTopologyCaptures: [[sources]] on the embedded topology are
// captured into its in-process stream, as the nats example's are into a
// server's. The config is the nats example's with the embedded bus in
// place of [nats] and [redis].
func TestEmbeddedTopologyCaptures(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, "orders")
	b, err := os.ReadFile(exampleCopy(t, "nats", db.schema))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	cut := func(from, to string) {
		i, j := strings.Index(text, from), strings.Index(text, to)
		if i < 0 || j < i {
			t.Fatalf("the nats example has no %q before %q", from, to)
		}
		text = text[:i] + text[j:]
	}
	cut("[nats]", "[http]")
	text = strings.Replace(text, `topology = "nats"`, fmt.Sprintf("topology = \"embedded\"\n\n[embedded]\ndata_dir = %q\nport = %d", t.TempDir(), testenv.FreePort(t)), 1)
	cfg := filepath.Join(t.TempDir(), "embedded.toml")
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, "embedded", cfg, []string{"ORDERS_DB_URL=" + db.url})
	crud(t, db, "orders", "Order", "orders_db", 1, p)
	p.stop(t)
}

func TestMultiDBTopology(t *testing.T) {
	t.Parallel()
	orders := newDatabase(t, "orders")
	billing := newDatabase(t, "invoices")
	cfg := exampleCopy(t, "multidb", orders.schema, billing.schema)
	env := append(append(natsEnv(t), redisEnv(t)...), "ORDERS_DB_URL="+orders.url, "BILLING_DB_URL="+billing.url)
	p := start(t, "multidb", cfg, env)
	crud(t, orders, "orders", "Order", "orders_db", 1, p)
	crud(t, billing, "invoices", "Invoice", "billing_db", 1, p)
	p.stop(t)
}

// TestNATSOneBridgeThreeWorkers runs the nats topology as one capture
// process and three observer processes: every change is handled once,
// by one of the workers, and each worker handles a share of them.
func TestNATSOneBridgeThreeWorkers(t *testing.T) {
	t.Parallel()
	db := newDatabase(t, "orders")
	cfg := exampleCopy(t, "nats", db.schema)
	env := append(append(natsEnv(t), redisEnv(t)...), "ORDERS_DB_URL="+db.url, "MILLRACE_NATS__PARTITION_TTL=2s")
	bridge := start(t, "bridge", cfg, env, "--role", "capture")
	var workers []*proc
	for i := range 3 {
		workers = append(workers, start(t, fmt.Sprintf("worker %d", i), cfg, env, "--role", "observe"))
	}
	// The example's 12 partitions are dealt 4 to each worker, but the
	// first worker holds all 12 until the others joined and it gave
	// theirs up: changes made before that all go to it.
	waitDealt(t, 12, workers...)

	const rows, perTx = 300, 10
	for i := 0; i < rows; i += perTx {
		db.exec(t, "INSERT INTO orders (id, status, total) SELECT g, 'new', 10 FROM generate_series($1::bigint, $2::bigint) g", i+1, i+perTx)
	}
	db.exec(t, "UPDATE orders SET status = 'paid'")
	const events = 2 * rows

	all := waitActions(t, events, func(a action) bool { return a.EntityType == "Order" }, workers...)
	// A late duplicate would show up after the count was reached.
	time.Sleep(2 * time.Second)
	counts := map[string]int{}
	perWorker := make([]int, len(workers))
	for i, w := range workers {
		for _, a := range w.actions() {
			counts[a.EventID]++
			perWorker[i]++
		}
	}
	if len(counts) != events {
		t.Errorf("%d distinct events handled, want %d (first wait saw %d actions)", len(counts), events, len(all))
	}
	for id, n := range counts {
		if n != 1 {
			t.Errorf("event %s handled %d times, want once", id, n)
		}
	}
	if n := len(bridge.actions()); n != 0 {
		t.Errorf("the capture process ran %d actions, want none", n)
	}
	// The 300 orders hash to the partitions of each worker as 102, 94
	// and 104 (bus/partition.Of): a worker below a fifth of the events
	// did not get its partitions.
	for i, n := range perWorker {
		if n < events/5 {
			t.Errorf("worker %d handled %d of %d events, want at least a fifth: %v", i, n, events, perWorker)
		}
	}
	t.Logf("actions per worker: %v", perWorker)
	for _, w := range workers {
		w.stop(t)
	}
	bridge.stop(t)
}

// waitDealt waits until the workers hold equal shares of the partitions.
func waitDealt(t *testing.T, partitions int, workers ...*proc) {
	t.Helper()
	ps := make([]*e2e.Process, len(workers))
	for i, w := range workers {
		ps[i] = w.Process
	}
	e2e.WaitDealt(t, partitions, 30*time.Second, ps...)
}

// TestPartitionedWorkersKeepEntityOrder: with partitions set (12 in the
// nats and redis examples), three workers share the events, an entity's
// events run in commit order whichever workers run them, and when a
// worker is killed the others take its partitions over and nothing is
// lost.
func TestPartitionedWorkersKeepEntityOrder(t *testing.T) {
	t.Run("nats", func(t *testing.T) {
		t.Parallel()
		db := newDatabase(t, "orders")
		env := append(append(natsEnv(t), redisEnv(t)...), "ORDERS_DB_URL="+db.url, "MILLRACE_NATS__PARTITION_TTL=2s")
		partitionedWorkers(t, db, exampleCopy(t, "nats", db.schema), env)
	})
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		db := newDatabase(t, "orders")
		env := append(redisEnv(t), "ORDERS_DB_URL="+db.url, "MILLRACE_REDIS__PARTITION_TTL=2s")
		partitionedWorkers(t, db, exampleCopy(t, "redis", db.schema), env)
	})
}

func partitionedWorkers(t *testing.T, db database, cfg string, env []string) {
	bridge := start(t, "bridge", cfg, env, "--role", "capture")
	var workers []*proc
	for i := range 3 {
		workers = append(workers, start(t, fmt.Sprintf("worker %d", i), cfg, env, "--role", "observe"))
	}
	// The first worker takes every partition; wait until it has dealt
	// them out (12 over 3 workers), so that all three run events at once.
	waitDealt(t, 12, workers...)

	const rows, rounds = 40, 12
	db.exec(t, "INSERT INTO orders (id, status, total) SELECT g, 's0', 0 FROM generate_series(1, $1::bigint) g", rows)
	update := func(from, to int) {
		for r := from; r <= to; r++ {
			// One statement per round: every row gets its next status.
			db.exec(t, "UPDATE orders SET status = 's' || $1::int, total = $1", r)
		}
	}
	update(1, rounds/2)
	waitActions(t, rows, func(a action) bool { return a.EventType == "UPDATE" }, workers...)
	// A worker dies without draining: its partitions wait partition_ttl,
	// then the others take them over from the consumers' ack floors.
	workers[0].Kill()
	update(rounds/2+1, rounds)

	done := func(a action) bool { return a.EventType == "UPDATE" && a.Data["status"] == fmt.Sprint("s", rounds) }
	waitActions(t, rows, done, workers...)
	time.Sleep(time.Second) // a late duplicate or straggler shows up too
	var all []action
	perWorker := make([]int, len(workers))
	for i, w := range workers {
		for _, a := range w.actions() {
			if a.EntityType == "Order" {
				all = append(all, a)
				perWorker[i]++
			}
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].Time.Before(all[j].Time) })
	last := map[string]int{}
	seen := map[string]bool{}
	reruns := 0
	for _, a := range all {
		n := 0
		if a.EventType == "UPDATE" {
			fmt.Sscanf(fmt.Sprint(a.Data["status"]), "s%d", &n)
		}
		switch prev, ok := last[a.EntityID]; {
		case ok && n < prev:
			t.Errorf("order %s: status s%d ran after s%d", a.EntityID, n, prev)
		case ok && n == prev:
			reruns++ // the killed worker ran it but died before its ack
		}
		last[a.EntityID] = n
		seen[a.EventID] = true
	}
	if want := rows * (1 + rounds); len(seen) != want {
		t.Errorf("%d distinct events handled, want %d", len(seen), want)
	}
	if perWorker[1] == 0 || perWorker[2] == 0 {
		t.Errorf("the live workers should share the events: %v", perWorker)
	}
	t.Logf("actions per worker: %v; %d re-runs of events the killed worker left unacked", perWorker, reruns)
	for _, w := range workers[1:] {
		w.stop(t)
	}
	bridge.stop(t)
}
