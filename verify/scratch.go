package verify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/internal/tcpproxy"
)

// EntityType is the entity type of the scratch table's changes.
const EntityType = "VerifyRow"

// kinds are what verify knows of each built-in topology: its bus, where
// its dedup ledger lives when dedup.store is empty, and whether several
// processes may run on one bus.
var kinds = map[string]struct {
	bus, ledger string
	workers     int
}{
	"embedded": {"embedded", "memory", 1}, // the bus lives in the process, its data dir is locked
	"nats":     {"nats", "redis", 2},
	"multidb":  {"nats", "redis", 2},
	"redis":    {"redis", "redis", 2},
	"postgres": {"postgres", "postgres", 2},
}

// scratch is verify's own share of the user's services, and the config
// of its workers.
type scratch struct {
	Name     string // millrace_verify_<hex>: schema, stream, key prefix, group
	Topology string
	Dir      string // temp dir: config, logs, embedded data
	Config   string
	Env      []string
	Workers  int
	Sources  []*scratchSource
	// Ingest is set when the config has no [[sources]]: changes go
	// through POST /v1/events.
	Ingest bool
	// Dedup is where the ledger lives (memory, redis, postgres);
	// DedupProxy is the proxy in front of it (nil: NoDedupCut says why).
	Dedup      string
	DedupProxy *tcpproxy.Proxy
	NoDedupCut string

	storesURL, storesSchema string
	redisURL, natsURL       string
}

// scratchSource is a scratch schema in one source's database: the
// watched table rows(id, seq, sum) and millrace's change log.
type scratchSource struct {
	Name, Schema, Table string
	Pool                *pgxpool.Pool
	// AppName is the application_name of the capture's connection.
	AppName   []string
	WAL       bool
	Slot, Pub string
}

// ConfigError is a problem of the user's config, with its key path.
type ConfigError struct {
	Key string
	Err error
}

func (e *ConfigError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

func configErr(key, format string, args ...any) error {
	return &ConfigError{Key: key, Err: fmt.Errorf(format, args...)}
}

// newScratch derives the scratch config from the user's file (path) and
// its loaded form (cfg), and creates the scratch schemas. On error it
// removes what it created.
func newScratch(ctx context.Context, path string, cfg *config.Config, hookURL, secret string, opts Options) (s *scratch, err error) {
	kind, ok := kinds[cfg.Topology]
	if !ok {
		return nil, configErr("topology", "verify knows the built-in topologies (embedded, multidb, nats, postgres, redis), not %q", cfg.Topology)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	tree, err := toml.Parser().Unmarshal(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var id [4]byte
	_, _ = rand.Read(id[:])
	s = &scratch{Name: "millrace_verify_" + hex.EncodeToString(id[:]), Topology: cfg.Topology, Workers: kind.workers}
	defer func() {
		if err != nil {
			s.Remove(context.Background())
		}
	}()
	if s.Dir, err = os.MkdirTemp("", s.Name+"_"); err != nil {
		return s, err
	}
	env := []string{"MILLRACE_LOG__FORMAT=json", "MILLRACE_LOG__LEVEL=info", "MILLRACE_HTTP__ADDR=127.0.0.1:0", secretEnv + "=" + secret}
	set := func(key, value string) {
		section, k, _ := strings.Cut(key, ".")
		env = append(env, "MILLRACE_"+strings.ToUpper(section)+"__"+strings.ToUpper(k)+"="+value)
	}

	// Sources: a scratch schema in each source's database.
	var srcs []any
	for i, src := range cfg.Sources {
		key := fmt.Sprintf("sources[%d]", i)
		u, err := config.Secret(src.PostgresURL, src.PostgresURLEnv)
		if err != nil {
			return s, configErr(key+".postgres_url_env", "%w", err)
		}
		ss := &scratchSource{Name: fmt.Sprintf("%s_%d", s.Name, i), Schema: fmt.Sprintf("%s_%d", s.Name, i), WAL: src.Capture == config.CaptureWAL}
		ss.Table = ss.Schema + ".rows"
		ss.AppName = []string{"millrace capture wal " + ss.Name}
		if !ss.WAL {
			ss.AppName = []string{"millrace capture " + ss.Name + "/%"}
		}
		if ss.Pool, err = connect(ctx, u); err != nil {
			return s, configErr(key+".postgres_url", "%w", err)
		}
		s.Sources = append(s.Sources, ss)
		if _, err := ss.Pool.Exec(ctx, fmt.Sprintf(`CREATE SCHEMA %[1]s; CREATE TABLE %[1]s.rows (id int PRIMARY KEY, seq bigint NOT NULL, sum bigint NOT NULL)`, ss.Schema)); err != nil {
			return s, fmt.Errorf("%s: create the scratch table: %w", key, err)
		}
		urlEnv := fmt.Sprintf("MILLRACE_VERIFY_SOURCE_%d_URL", i)
		env = append(env, urlEnv+"="+u)
		t := map[string]any{
			"name": ss.Name, "postgres_url_env": urlEnv, "tables": []any{ss.Table},
			"entities": map[string]any{ss.Table: EntityType}, "schema": ss.Schema, "install": true,
		}
		if ss.WAL {
			ss.Slot, ss.Pub = ss.Schema, ss.Schema
			t["capture"], t["slot"], t["publication"] = "wal", ss.Slot, ss.Pub
		}
		srcs = append(srcs, t)
	}
	s.Ingest = len(srcs) == 0
	if len(srcs) > 0 {
		tree["sources"] = srcs
	}

	switch kind.bus {
	case "embedded":
		set("embedded.data_dir", filepath.Join(s.Dir, "embedded"))
		set("embedded.port", "0")
	case "nats":
		s.natsURL = cfg.NATS.URL
		set("nats.url", s.natsURL)
		set("nats.stream", strings.ToUpper(s.Name)+"_EVENTS")
		set("nats.subject_prefix", s.Name)
		set("nats.consumer", s.Name)
		// A killed worker's partitions move to the other after
		// partition_ttl: keep the kill-worker scenario short.
		set("nats.partition_ttl", "2s")
	case "redis":
		set("redis.group", s.Name)
		set("redis.partition_ttl", "2s")
	case "postgres":
		set("postgres.group", s.Name)
	}

	// Where the ledger lives, and the proxy verify cuts.
	s.Dedup = cmpOr(cfg.Dedup.Store, kind.ledger)
	usesRedis := kind.bus == "redis" || kind.ledger == "redis" && (cfg.Dedup.Store == "" || cfg.Cache.Store == "") ||
		cfg.Dedup.Store == "redis" || cfg.Cache.Store == "redis"
	usesStores := kind.bus == "postgres" || cfg.Dedup.Store == "postgres" || cfg.Cache.Store == "postgres"
	if usesRedis {
		u, err := config.Secret(cfg.Redis.URL, cfg.Redis.URLEnv)
		if err != nil {
			return s, configErr("redis.url_env", "%w", err)
		}
		s.redisURL = u
		set("redis.key_prefix", s.Name+":")
		redisTree := section(tree, "redis")
		delete(redisTree, "url")
		redisTree["url_env"] = "MILLRACE_VERIFY_REDIS_URL"
		viaURL := u
		if s.Dedup == "redis" && cfg.Dedup.Enabled {
			if viaURL, err = s.proxyURL(u); err != nil {
				return s, configErr("redis.url", "%w", err)
			}
		}
		env = append(env, "MILLRACE_VERIFY_REDIS_URL="+viaURL)
	}
	if usesStores {
		u, err := config.Secret(cfg.Postgres.URL, cfg.Postgres.URLEnv)
		if err != nil {
			return s, configErr("postgres.url_env", "%w", err)
		}
		if u == "" && len(cfg.Sources) > 0 {
			u, _ = config.Secret(cfg.Sources[0].PostgresURL, cfg.Sources[0].PostgresURLEnv)
		}
		if u == "" {
			return s, configErr("postgres.url", "is required to hold the stores")
		}
		s.storesSchema = s.Name + "_stores"
		pool, err := connect(ctx, u)
		if err != nil {
			return s, configErr("postgres.url", "%w", err)
		}
		_, err = pool.Exec(ctx, "CREATE SCHEMA "+s.storesSchema)
		pool.Close()
		if err != nil {
			return s, fmt.Errorf("postgres.url: create the scratch schema: %w", err)
		}
		s.storesURL = u
		viaURL := u
		if s.Dedup == "postgres" && cfg.Dedup.Enabled {
			if viaURL, err = s.proxyURL(u); err != nil {
				return s, configErr("postgres.url", "%w", err)
			}
		}
		viaURL, err = withSearchPath(viaURL, s.storesSchema)
		if err != nil {
			return s, configErr("postgres.url", "%w", err)
		}
		pgTree := section(tree, "postgres")
		delete(pgTree, "url")
		pgTree["url_env"] = "MILLRACE_VERIFY_STORES_URL"
		env = append(env, "MILLRACE_VERIFY_STORES_URL="+viaURL)
		set("postgres.schema", s.storesSchema)
	}
	switch {
	case !cfg.Dedup.Enabled:
		s.NoDedupCut = "dedup is off (dedup.enabled = false)"
	case s.Dedup == "memory":
		s.NoDedupCut = "the dedup ledger is in the process's memory (dedup.store = \"memory\" or the embedded default): no network address to cut"
	case s.DedupProxy == nil:
		s.NoDedupCut = "the dedup store's address is not a host:port URL"
	}

	// The one observer: a webhook to verify's receiver, retried for
	// longer than the outage and the breaker's open interval after it
	// (the 100 attempts span about three times both), so that an outage
	// ends in delivery, not in dead letters.
	maxDelay := max(500*time.Millisecond, 3*(opts.Outage+cfg.Breaker.OpenInterval.D())/100)
	tree["observers"] = map[string]any{"verify": map[string]any{
		"event": "*", "entity": EntityType,
		"retry":   map[string]any{"max_attempts": int64(100), "initial": "200ms", "max": maxDelay.String()},
		"timeout": "5s",
		"actions": []any{map[string]any{"type": "webhook", "url": hookURL, "secret_env": secretEnv, "allow_private": true}},
	}}
	// Loopback HTTP, no ingest tokens needed; every role in each worker.
	delete(section(tree, "http"), "ingest_tokens")
	tree["role"] = "all"

	out, err := toml.Parser().Marshal(tree)
	if err != nil {
		return s, err
	}
	s.Config = filepath.Join(s.Dir, "verify.toml")
	if err := os.WriteFile(s.Config, out, 0o600); err != nil {
		return s, err
	}
	// The URLs verify resolved (the loaded config had the user's
	// overrides applied) and then replaced: a variable left in the
	// environment would override the replacement, or clash with url_env.
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "MILLRACE_REDIS__URL", "MILLRACE_REDIS__URL_ENV", "MILLRACE_POSTGRES__URL", "MILLRACE_POSTGRES__URL_ENV":
			continue
		}
		s.Env = append(s.Env, kv)
	}
	s.Env = append(s.Env, env...)
	return s, nil
}

// proxyURL starts the dedup proxy in front of the service of raw and
// returns raw with the proxy's address.
func (s *scratch) proxyURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Port() == "" {
		return raw, nil // not host:port: no cut (NoDedupCut says so)
	}
	p := tcpproxy.New(u.Host)
	if err := p.Listen("127.0.0.1:0"); err != nil {
		return "", err
	}
	s.DedupProxy = p
	u.Host = p.Addr()
	return u.String(), nil
}

func withSearchPath(raw, schema string) (string, error) {
	if !strings.Contains(raw, "://") {
		return raw + " search_path=" + schema, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func section(tree map[string]any, name string) map[string]any {
	m, _ := tree[name].(map[string]any)
	if m == nil {
		m = map[string]any{}
		tree[name] = m
	}
	return m
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func connect(ctx context.Context, u string) (*pgxpool.Pool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, u)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// Remove drops everything the scratch created: schemas, replication
// slots and publications, the streams and key-value buckets named after
// it, its Redis keys, its temp dir. Run it after the workers stopped.
func (s *scratch) Remove(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	var errs []error
	if s.DedupProxy != nil {
		s.DedupProxy.Close()
	}
	for _, src := range s.Sources {
		if src.WAL {
			errs = append(errs, dropReplication(ctx, src.Pool, src.Slot, src.Pub))
		}
		if _, err := src.Pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+src.Schema+" CASCADE"); err != nil {
			errs = append(errs, fmt.Errorf("drop schema %s: %w", src.Schema, err))
		}
		src.Pool.Close()
	}
	if s.storesSchema != "" {
		if pool, err := connect(ctx, s.storesURL); err != nil {
			errs = append(errs, err)
		} else {
			if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+s.storesSchema+" CASCADE"); err != nil {
				errs = append(errs, fmt.Errorf("drop schema %s: %w", s.storesSchema, err))
			}
			pool.Close()
		}
	}
	if s.natsURL != "" {
		errs = append(errs, deleteStreams(ctx, s.natsURL, s.Name))
	}
	if s.redisURL != "" {
		errs = append(errs, deleteKeys(ctx, s.redisURL, s.Name+":"))
	}
	if s.Dir != "" {
		errs = append(errs, os.RemoveAll(s.Dir))
	}
	return errors.Join(errs...)
}

func dropReplication(ctx context.Context, pool *pgxpool.Pool, slot, pub string) error {
	// The walsender of a killed worker may hold the slot a moment.
	deadline := time.Now().Add(15 * time.Second)
	for {
		var pid *int32
		err := pool.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) {
			break
		}
		if err != nil {
			return err
		}
		if pid == nil {
			if _, err := pool.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot); err != nil {
				return fmt.Errorf("drop replication slot %s: %w", slot, err)
			}
			break
		}
		if time.Now().After(deadline) {
			_, _ = pool.Exec(ctx, "SELECT pg_terminate_backend($1)", *pid)
			deadline = time.Now().Add(5 * time.Second)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := pool.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{pub}.Sanitize()); err != nil {
		return fmt.Errorf("drop publication %s: %w", pub, err)
	}
	return nil
}

// deleteStreams deletes the streams named after name, and those behind
// key-value buckets named after it.
func deleteStreams(ctx context.Context, natsURL, name string) error {
	names, js, nc, err := ownedStreams(ctx, natsURL, name)
	if err != nil {
		return err
	}
	defer nc.Close()
	var errs []error
	for _, n := range names {
		if err := js.DeleteStream(ctx, n); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			errs = append(errs, fmt.Errorf("delete stream %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

func ownedStreams(ctx context.Context, natsURL, name string) ([]string, jetstream.JetStream, *nats.Conn, error) {
	nc, err := nats.Connect(natsURL, nats.Name("millrace verify"), nats.Timeout(10*time.Second))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("nats: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, nil, err
	}
	p := strings.ToLower(name)
	var names []string
	lister := js.StreamNames(ctx)
	for n := range lister.Name() {
		l := strings.ToLower(n)
		if strings.HasPrefix(l, p) || strings.HasPrefix(l, "kv_"+p) || strings.HasPrefix(l, "obj_"+p) {
			names = append(names, n)
		}
	}
	if err := lister.Err(); err != nil {
		nc.Close()
		return nil, nil, nil, fmt.Errorf("list streams: %w", err)
	}
	return names, js, nc, nil
}

// deleteKeys deletes the Redis keys under prefix.
func deleteKeys(ctx context.Context, redisURL, prefix string) error {
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return err
	}
	rc := redis.NewClient(opts)
	defer func() { _ = rc.Close() }()
	var keys []string
	it := rc.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for it.Next(ctx) {
		keys = append(keys, it.Val())
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("redis: scan %s*: %w", prefix, err)
	}
	for start := 0; start < len(keys); start += 500 {
		if err := rc.Del(ctx, keys[start:min(start+500, len(keys))]...).Err(); err != nil {
			return fmt.Errorf("redis: delete %s*: %w", prefix, err)
		}
	}
	return nil
}
