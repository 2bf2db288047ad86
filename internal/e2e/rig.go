package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/cmd/millrace/cli"
	"github.com/millrace/millrace/internal/testenv"
)

// Bus is how a topology carries events, as far as a test that writes
// straight onto it must know.
type Bus int

// The buses of the topologies.
const (
	// BusEmbedded is JetStream inside the millrace process.
	BusEmbedded Bus = iota
	// BusJetStream is the NATS JetStream server at testenv.NATSURL.
	BusJetStream
	// BusRedis is a Redis stream.
	BusRedis
	// BusChangeLog is the change-log table the capture reads.
	BusChangeLog
)

func (b Bus) String() string {
	return [...]string{"embedded JetStream", "JetStream", "Redis stream", "change log"}[b]
}

// buses maps each topology this package knows how to run to its bus. A
// topology that millrace registers and that is missing here fails the
// suites, so that it cannot go untested.
var buses = map[string]Bus{
	"embedded": BusEmbedded,
	"nats":     BusJetStream,
	"multidb":  BusJetStream,
	"redis":    BusRedis,
	"postgres": BusChangeLog,
}

// Topologies returns the topologies the millrace binary registers,
// sorted.
func Topologies() []string { return cli.Defaults().Topologies.Names() }

// WALRun is the suffix of a run that captures with logical replication
// (sources[].capture = "wal") instead of triggers: "nats+wal".
const WALRun = "+wal"

// Runs are what the end-to-end suites run: every topology, then nats,
// redis and multidb again with WAL capture (multidb: a slot and a
// publication per source). NewRig, BusOf and ExampleCaptures take either
// form.
func Runs() []string {
	return append(Topologies(), "nats"+WALRun, "redis"+WALRun, "multidb"+WALRun)
}

// WatermillRun is the suffix of a run on the topology's upstream
// Watermill bus driver (bus.driver = "watermill", with the example's
// partitions off, as that driver has none, and router.max_in_flight =
// 1): "nats+watermill".
const WatermillRun = "+watermill"

// SplitRun returns the topology of a run and its capture, "trigger" or
// "wal".
func SplitRun(run string) (topology, capture string) {
	run = strings.TrimSuffix(run, WatermillRun)
	if t, ok := strings.CutSuffix(run, WALRun); ok {
		return t, "wal"
	}
	return run, "trigger"
}

// Observer is one observer of a test config.
type Observer struct {
	// Event and Entity default to "*" and "Order".
	Event, Entity string
	Condition     string
	// OnFailure is dlq (default), log or drop.
	OnFailure string
	// Retry is the retry table, e.g. {"max_attempts": 5, "initial": "50ms"}.
	Retry map[string]any
	// Timeout bounds one action, e.g. "2s".
	Timeout string
	// Concurrency bounds the actions of one event run at once; 0 keeps
	// the default (4). With 1 each action ends before the next starts.
	Concurrency int
	// Actions are action tables, e.g. Receiver.Action("hook", nil).
	Actions []map[string]any
}

func (o Observer) table() map[string]any {
	m := map[string]any{"event": or(o.Event, "*"), "entity": or(o.Entity, "Order")}
	if o.Condition != "" {
		m["condition"] = o.Condition
	}
	if o.OnFailure != "" {
		m["on_failure"] = o.OnFailure
	}
	if o.Retry != nil {
		m["retry"] = o.Retry
	}
	if o.Timeout != "" {
		m["timeout"] = o.Timeout
	}
	if o.Concurrency != 0 {
		m["concurrency"] = int64(o.Concurrency)
	}
	actions := make([]any, len(o.Actions))
	for i, a := range o.Actions {
		actions[i] = a
	}
	m["actions"] = actions
	return m
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Options shape a Rig.
type Options struct {
	// Observers replace the example config's observers.
	Observers map[string]Observer
	// Receiver, when set, gives the webhook actions their secret.
	Receiver *Receiver
	// Env entries ("KEY=value") come after the rig's own, so they
	// override them.
	Env []string
	// LogLevel is the process's log level; default info.
	LogLevel string
	// RedisURL and NATSURL replace the shared servers (a private server
	// the test stops and starts).
	RedisURL, NATSURL string
	// HTTP keys replace those of the example's [http] table, e.g.
	// "ingest_tokens": []map[string]any{{"name": "shop", "token_env": "SHOP_TOKEN"}}.
	HTTP map[string]any
	// Tables are more sections of the config, e.g. "smtp", replacing the
	// example's.
	Tables map[string]map[string]any
	// PostgresPassword, when set, is put in every PostgreSQL URL the
	// process is given (the test server trusts local connections, so
	// any password is accepted), for tests that look for it where it
	// must not be.
	PostgresPassword string
	// Reroute replaces service addresses in the URLs the process gets
	// (sources, postgres.url, redis.url, nats.url): {"127.0.0.1:5432":
	// proxy.Addr()} puts a Proxy in front of PostgreSQL, and
	// "127.0.0.1:1" makes a service unreachable. The rig's own
	// connections keep the real address.
	Reroute map[string]string
}

// Rig is one topology's millrace process with its own share of the
// services: a schema per source, a Redis key prefix, a NATS stream, a
// data dir, an HTTP port.
type Rig struct {
	T        *testing.T
	Topology string
	// Capture is "trigger" or "wal" (sources[].capture).
	Capture string
	Bus     Bus
	// Name is unique to the rig (testenv.Name).
	Name string
	// Addr is the HTTP address, 127.0.0.1:port.
	Addr string
	// Proc is the millrace process.
	Proc *Process
	// Sources holds one pool per captured database (schemas of the test
	// server); empty when the topology does not capture, and events come
	// through HTTP ingest.
	Sources []*Source
	// StoreSchema is the schema of postgres.url, where the postgres
	// topology keeps its stores (and, without sources, its change log).
	StoreSchema string
	StorePool   *pgxpool.Pool
	// Redis and RedisPrefix: the shared Redis and the rig's key prefix.
	Redis       *redis.Client
	RedisPrefix string
	// JS, Stream and SubjectPrefix: the shared NATS and the rig's stream.
	NATS          *nats.Conn
	JS            jetstream.JetStream
	Stream        string
	SubjectPrefix string
	// Partitions is nats.partitions (redis.partitions on the Redis bus)
	// of the config (0: off).
	Partitions int
	// EmbeddedURL is the embedded NATS server's URL (embedded topology).
	EmbeddedURL string
	// AdminToken and AdminTokenEnv: the bearer token of the admin API
	// and the variable that holds it.
	AdminToken, AdminTokenEnv string
	// IngestTokens are the values of the config's ingest tokens, by
	// name; IngestToken, the first bearer token's, is what Post sends.
	IngestTokens map[string]string
	IngestToken  string
	// Config is the path of the generated config file.
	Config string
	// Env is the process's environment.
	Env []string

	prod *producer
}

// Source is one captured database: a schema with the watched table
// "orders" (id int primary key, status text, n int) and millrace's
// change log.
type Source struct {
	Name   string
	Schema string
	Pool   *pgxpool.Pool
	// URL is the connection URL the process uses (search_path and an
	// application_name that tells its connections apart).
	URL string
	// AppName is the application_name of the process's connections to
	// this source.
	AppName string
	// Slot and Publication are the source's with WAL capture; empty
	// otherwise.
	Slot, Publication string
}

// NewRig prepares topology's process for the test: it reads
// topologies/<topology>.toml, points it at the test's services and
// writes the config with opts.Observers in place of the example's. It
// does not start the process (Start does).
func NewRig(t *testing.T, run string, opts Options) *Rig {
	t.Helper()
	topology, capture := SplitRun(run)
	bus, ok := buses[topology]
	if !ok {
		t.Fatalf("e2e: millrace registers topology %q, which internal/e2e does not know how to run: add it to buses in internal/e2e/rig.go", topology)
	}
	example := filepath.Join(ModuleRoot(), "topologies", topology+".toml")
	raw, err := os.ReadFile(example)
	if err != nil {
		t.Fatalf("e2e: topology %q is registered but its example config cannot be read: %v", topology, err)
	}
	tree, err := toml.Parser().Unmarshal(raw)
	if err != nil {
		t.Fatalf("e2e: %s: %v", example, err)
	}
	r := &Rig{T: t, Topology: topology, Capture: capture, Bus: bus, Name: testenv.Name(t)}
	r.Addr = "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	var token [16]byte
	_, _ = rand.Read(token[:])
	r.AdminToken = hex.EncodeToString(token[:])
	env := []string{
		"MILLRACE_HTTP__ADDR=" + r.Addr,
		"MILLRACE_LOG__FORMAT=json",
		"MILLRACE_LOG__LEVEL=" + or(opts.LogLevel, "info"),
	}
	if strings.HasSuffix(run, WatermillRun) {
		// One event at a time: the setting under which the upstream
		// subscribers keep the order per entity (docs/drivers.md).
		env = append(env, "MILLRACE_BUS__DRIVER=watermill", "MILLRACE_NATS__PARTITIONS=0", "MILLRACE_REDIS__PARTITIONS=0",
			"MILLRACE_ROUTER__MAX_IN_FLIGHT=1")
	}
	set := func(section, key, value string) {
		env = append(env, "MILLRACE_"+strings.ToUpper(section)+"__"+strings.ToUpper(key)+"="+value)
	}
	// secretSet points a url / url_env pair at value: through the
	// variable the example names, else through the url key.
	secretSet := func(section, key, value string) {
		if name, _ := lookup(tree, section, key+"_env").(string); name != "" {
			env = append(env, name+"="+value)
			return
		}
		set(section, key, value)
	}
	r.AdminTokenEnv, _ = lookup(tree, "http", "admin_token_env").(string)
	if r.AdminTokenEnv == "" {
		r.AdminTokenEnv = cli.DefaultAdminTokenEnv
		set("http", "admin_token_env", r.AdminTokenEnv)
	}
	env = append(env, r.AdminTokenEnv+"="+r.AdminToken)
	env = append(env, r.ingestTokens(tree, opts)...)
	for name, table := range opts.Tables {
		tree[name] = table
	}

	// Services: a schema per source, and the stores' schema.
	srcs, _ := tree["sources"].([]any)
	for i, s := range srcs {
		src, _ := s.(map[string]any)
		if src == nil {
			t.Fatalf("e2e: %s: sources[%d] is not a table", example, i)
		}
		pool, schema := testenv.Postgres(t)
		name, _ := src["name"].(string)
		app := fmt.Sprintf("millrace_%s_%d", r.Name, i)
		so := &Source{Name: name, Schema: schema, Pool: pool, URL: withPassword(t, appURL(t, schema, app), opts.PostgresPassword), AppName: app}
		createOrders(t, pool)
		r.Sources = append(r.Sources, so)
		urlEnv, _ := src["postgres_url_env"].(string)
		if urlEnv == "" {
			urlEnv = fmt.Sprintf("MILLRACE_E2E_SOURCE_%d_URL", i)
		}
		delete(src, "postgres_url")
		delete(src, "mode")
		src["postgres_url_env"] = urlEnv
		table := schema + ".orders"
		src["tables"] = []any{table}
		src["entities"] = map[string]any{table: "Order"}
		src["schema"] = schema
		src["install"] = true
		if capture == "wal" {
			// The slot and publication outlive the process: drop them
			// after it stopped (this cleanup runs after Start's).
			slot, pub := "s_"+schema, "p_"+schema
			so.Slot, so.Publication = slot, pub
			t.Cleanup(func() { testenv.DropReplication(t, slot, pub) })
			src["capture"], src["slot"], src["publication"] = "wal", slot, pub
		}
		env = append(env, urlEnv+"="+so.URL)
	}
	if topology == "postgres" {
		if len(r.Sources) > 0 {
			r.StoreSchema, r.StorePool = r.Sources[0].Schema, r.Sources[0].Pool
		} else {
			r.StorePool, r.StoreSchema = testenv.Postgres(t)
		}
		secretSet("postgres", "url", withPassword(t, testenv.PostgresSchemaURL(t, r.StoreSchema), opts.PostgresPassword))
	}
	switch bus {
	case BusEmbedded:
		set("embedded", "data_dir", t.TempDir())
		port := testenv.FreePort(t)
		set("embedded", "port", strconv.Itoa(port))
		r.EmbeddedURL = fmt.Sprintf("nats://127.0.0.1:%d", port)
	case BusJetStream:
		r.NATS, r.JS, r.SubjectPrefix = testenv.NATS(t)
		r.Stream = strings.ToUpper(r.SubjectPrefix) + "_EVENTS"
		set("nats", "url", or(opts.NATSURL, testenv.NATSURL()))
		set("nats", "stream", r.Stream)
		set("nats", "subject_prefix", r.SubjectPrefix)
		set("nats", "consumer", r.SubjectPrefix)
		// A killed process's partitions move after partition_ttl: keep
		// the suites' restarts short.
		set("nats", "partition_ttl", "2s")
		if n, ok := lookup(tree, "nats", "partitions").(int64); ok {
			r.Partitions = int(n)
		}
	}
	if bus == BusRedis || bus == BusJetStream || opts.RedisURL != "" {
		r.Redis, r.RedisPrefix = testenv.Redis(t)
		secretSet("redis", "url", or(opts.RedisURL, testenv.RedisURL()))
		set("redis", "key_prefix", r.RedisPrefix)
		// A name that survives restarts gets a restarted worker its
		// pending entries back at once.
		set("redis", "consumer", "worker")
		set("redis", "partition_ttl", "2s")
		if n, ok := lookup(tree, "redis", "partitions").(int64); ok && bus == BusRedis {
			r.Partitions = int(n)
		}
	}

	observers := map[string]any{}
	for name, o := range opts.Observers {
		observers[name] = o.table()
	}
	tree["observers"] = observers
	out, err := toml.Parser().Marshal(tree)
	if err != nil {
		t.Fatalf("e2e: write config: %v", err)
	}
	r.Config = filepath.Join(t.TempDir(), topology+".toml")
	if err := os.WriteFile(r.Config, out, 0o600); err != nil {
		t.Fatal(err)
	}
	if opts.Receiver != nil {
		env = append(env, opts.Receiver.Env())
	}
	for i, kv := range env {
		env[i] = reroute(kv, opts.Reroute)
	}
	r.Env = append(append(os.Environ(), env...), opts.Env...)
	r.Proc = NewProcess(t, "millrace "+topology, Binary(t), []string{"run", "-c", r.Config}, r.Env)
	r.prod = newProducer(r)
	return r
}

// ingestTokens applies opts.HTTP to the [http] table and gives each
// ingest token of the config a value: the one opts.Env sets, else a
// fresh random one. It returns the variables to set.
func (r *Rig) ingestTokens(tree map[string]any, opts Options) []string {
	h, _ := tree["http"].(map[string]any)
	if h == nil {
		h = map[string]any{}
		tree["http"] = h
	}
	for k, v := range opts.HTTP {
		h[k] = v
	}
	var tokens []map[string]any
	switch v := h["ingest_tokens"].(type) {
	case []any:
		for _, t := range v {
			m, _ := t.(map[string]any)
			tokens = append(tokens, m)
		}
	case []map[string]any:
		tokens = v
	}
	given := func(name string) (string, bool) {
		for i := len(opts.Env) - 1; i >= 0; i-- {
			if v, ok := strings.CutPrefix(opts.Env[i], name+"="); ok {
				return v, true
			}
		}
		return "", false
	}
	r.IngestTokens = map[string]string{}
	var env []string
	for _, t := range tokens {
		name, _ := t["name"].(string)
		for _, key := range []string{"token_env", "secret_env"} {
			envName, _ := t[key].(string)
			if envName == "" {
				continue
			}
			v, ok := given(envName)
			if !ok {
				var b [16]byte
				_, _ = rand.Read(b[:])
				v = hex.EncodeToString(b[:])
				env = append(env, envName+"="+v)
			}
			r.IngestTokens[name] = v
			if key == "token_env" && r.IngestToken == "" {
				r.IngestToken = v
			}
		}
	}
	return env
}

// reroute returns the variable kv ("NAME=url") with the URL's host
// replaced by to[host], when there is one.
func reroute(kv string, to map[string]string) string {
	name, value, _ := strings.Cut(kv, "=")
	u, err := url.Parse(value)
	if err != nil || u.Scheme == "" || to[u.Host] == "" {
		return kv
	}
	u.Host = to[u.Host]
	return name + "=" + u.String()
}

// lookup returns tree[section][key], or nil.
func lookup(tree map[string]any, section, key string) any {
	m, _ := tree[section].(map[string]any)
	return m[key]
}

// appURL is the test server's URL with search_path=schema and an
// application_name.
func appURL(t testing.TB, schema, app string) string {
	t.Helper()
	u, err := url.Parse(testenv.PostgresSchemaURL(t, schema))
	if err != nil {
		t.Fatalf("e2e: %v", err)
	}
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	return u.String()
}

// withPassword returns the URL raw with password pw ("" keeps it as
// it is).
func withPassword(t testing.TB, raw, pw string) string {
	t.Helper()
	if pw == "" {
		return raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		t.Fatalf("e2e: cannot put a password in the PostgreSQL URL (%v); give one as postgres://", err)
	}
	user := "postgres"
	if u.User != nil && u.User.Username() != "" {
		user = u.User.Username()
	}
	u.User = url.UserPassword(user, pw)
	return u.String()
}

func createOrders(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	if _, err := pool.Exec(context.Background(),
		"CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, n int NOT NULL)"); err != nil {
		t.Fatalf("e2e: create table orders: %v", err)
	}
}

// Captures reports whether the rig's events come from watched tables.
func (r *Rig) Captures() bool { return len(r.Sources) > 0 }

// readyTimeout bounds a start: migrations, stream creation, first
// connections.
const readyTimeout = 60 * time.Second

// Start starts the process and waits until /readyz answers 200.
func (r *Rig) Start() {
	r.T.Helper()
	r.Proc.Start()
	r.Proc.WaitReady(r.URL("/readyz"), readyTimeout)
}

// Restart stops the process with SIGTERM (it must exit with 0 within
// shutdownWait) and starts it again.
func (r *Rig) Restart() {
	r.T.Helper()
	if code := r.Proc.Terminate(shutdownWait); code != 0 {
		r.T.Fatalf("e2e: millrace exited with %d after SIGTERM", code)
	}
	r.Start()
}

// shutdownWait bounds a graceful stop: the drain timeout of the example
// configs (at most 30s) and some.
const shutdownWait = 45 * time.Second

// ShutdownWait is how long a graceful stop may take.
func ShutdownWait() time.Duration { return shutdownWait }

// URL returns the process's URL for path.
func (r *Rig) URL(path string) string { return "http://" + r.Addr + path }

// Describe names the rig's setup in one line, for test logs.
func (r *Rig) Describe() string {
	var parts []string
	parts = append(parts, "topology="+r.Topology, "bus="+r.Bus.String())
	if len(r.Sources) > 0 {
		var s []string
		for _, src := range r.Sources {
			s = append(s, src.Name+":"+src.Schema)
		}
		sort.Strings(s)
		parts = append(parts, "sources="+strings.Join(s, ","))
	} else {
		parts = append(parts, "source=http-ingest")
	}
	return strings.Join(parts, " ")
}

// SourceOf returns the name of the source whose table holds entity id,
// or "" when the rig does not capture.
func (r *Rig) SourceOf(id int) string {
	if len(r.Sources) == 0 {
		return ""
	}
	return r.Sources[id%len(r.Sources)].Name
}

// ExampleCaptures reports whether topology's example config captures
// changes from PostgreSQL (it has [[sources]]).
func ExampleCaptures(t testing.TB, run string) bool {
	t.Helper()
	topology, _ := SplitRun(run)
	raw, err := os.ReadFile(filepath.Join(ModuleRoot(), "topologies", topology+".toml"))
	if err != nil {
		t.Fatalf("e2e: topology %q is registered but its example config cannot be read: %v", topology, err)
	}
	tree, err := toml.Parser().Unmarshal(raw)
	if err != nil {
		t.Fatalf("e2e: topologies/%s.toml: %v", topology, err)
	}
	srcs, _ := tree["sources"].([]any)
	return len(srcs) > 0
}

// BusOf returns topology's bus; false when internal/e2e does not know the
// topology.
func BusOf(run string) (Bus, bool) {
	topology, _ := SplitRun(run)
	b, ok := buses[topology]
	return b, ok
}
