package bench

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/bus/capture"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/router"
)

// noopType is the action type the suite registers: it records the event
// and returns, a no-op as far as the pipeline is concerned. It is not
// the built-in "noop", which has no run to record into.
const noopType = "bench_noop"

// noopConfig is the noop action's section: the run whose recorder it
// feeds.
type noopConfig struct {
	Run string `koanf:"run"`
}

// Validate requires the run.
func (c noopConfig) Validate() error {
	if c.Run == "" {
		return config.Errorf("run", "is required")
	}
	return nil
}

func (s *suite) buildNoop(_ context.Context, c noopConfig, _ handlers.Deps) (handlers.Action, error) {
	s.mu.Lock()
	rec := s.recorders[c.Run]
	s.mu.Unlock()
	if rec == nil {
		return nil, fmt.Errorf("noop: no bench run %q", c.Run)
	}
	return handlers.ActionFunc(func(_ context.Context, ev *event.Event) error {
		rec.markEvent(ev)
		return nil
	}), nil
}

// newID returns a run id: lower case letters and digits, unique enough
// to name a stream, a key prefix and schemas of its own.
func newID() string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return "mrb" + hex.EncodeToString(b)
}

// runEnv is what one millrace run owns outside the process.
type runEnv struct {
	id      string
	dataDir string   // embedded: the JetStream store
	schemas []string // capture: one schema (and watched table) per source
	pgURL   string   // postgres.url, with the run's schema first in search_path
	wal     bool     // the sources capture with capture = "wal"
}

// prepare creates what the run's config points at: a data dir, or the
// watched tables with their capture triggers (with wal, the tables alone:
// the router creates the slot and the publication).
func (s *suite) prepare(ctx context.Context, spec topoSpec, wal bool) (*runEnv, error) {
	env := &runEnv{id: newID(), wal: wal}
	if spec.name == "embedded" {
		dir, err := os.MkdirTemp("", "millrace-bench-")
		if err != nil {
			return nil, err
		}
		env.dataDir = dir
	}
	u, err := url.Parse(s.opts.PostgresURL)
	if err != nil {
		return nil, fmt.Errorf("postgres url: %w", err)
	}
	q := u.Query()
	// Tables a topology creates without a schema land in the run's.
	q.Set("search_path", env.id+",public")
	u.RawQuery = q.Encode()
	env.pgURL = u.String()
	if !spec.capture() {
		return env, nil
	}
	pool, err := s.postgres(ctx)
	if err != nil {
		return nil, err
	}
	// The run's schema exists even when no source uses it, so that
	// search_path puts the topology's own tables there.
	if err := createTable(ctx, pool, env.id); err != nil {
		return env, err
	}
	for i := range spec.sources {
		schema := env.id
		if spec.sources > 1 {
			schema = fmt.Sprintf("%s_%c", env.id, 'a'+i)
		}
		env.schemas = append(env.schemas, schema)
		if err := createTable(ctx, pool, schema); err != nil {
			return env, err
		}
		// The topology installs the triggers too (sources.install); doing
		// it here first means the first rows are captured whenever the
		// topology gets to it.
		table := schema + "." + benchTable
		if wal {
			continue
		}
		if err := capture.Watch(ctx, pool, schema, []string{table}, map[string]string{table: benchEntity}); err != nil {
			return env, err
		}
	}
	return env, nil
}

// cleanup drops what the run left in the services: schemas, streams and
// keys whose names hold the run id. It logs what it could not drop.
func (s *suite) cleanup(spec topoSpec, env *runEnv) {
	if env == nil {
		return
	}
	if env.dataDir != "" {
		if err := os.RemoveAll(env.dataDir); err != nil {
			s.logger.Warn("bench: remove data dir", "dir", env.dataDir, "err", err)
		}
	}
	if spec.name == "embedded" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if pool, err := s.postgres(ctx); err == nil {
		if env.wal {
			if err := dropReplication(ctx, pool, env); err != nil {
				s.logger.Warn("bench: drop replication slots", "run", env.id, "err", err)
			}
		}
		rows, err := pool.Query(ctx, "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", "%"+env.id+"%")
		var names []string
		if err == nil {
			for rows.Next() {
				var n string
				if rows.Scan(&n) == nil {
					names = append(names, n)
				}
			}
			rows.Close()
			err = rows.Err()
		}
		for _, n := range names {
			if _, e := pool.Exec(ctx, `DROP SCHEMA IF EXISTS "`+n+`" CASCADE`); e != nil {
				err = errors.Join(err, e)
			}
		}
		if err != nil {
			s.logger.Warn("bench: drop schemas", "run", env.id, "err", err)
		}
	}
	if spec.name == "postgres" {
		return
	}
	if rdb, err := s.redis(ctx); err == nil {
		s.unlinkKeys(ctx, rdb, env.id)
	}
	if spec.name == "redis" {
		return
	}
	s.madeStreams(env.id)
	if nc, err := s.nats(); err == nil {
		if err := deleteStreams(ctx, nc, env.id); err != nil {
			s.logger.Warn("bench: delete streams", "run", env.id, "err", err)
		}
	}
}

// config builds the config of one millrace run: the topology, the run's
// own names everywhere, one observer "bench" with the given action.
func (s *suite) config(spec topoSpec, env *runEnv, action config.Action, sc scenarioSpec) (*config.Config, error) {
	cfg := config.Default()
	cfg.Topology = spec.name
	cfg.Log.Level = "error"
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Router.ShutdownTimeout = config.Duration(10 * time.Second)
	cfg.Embedded.DataDir = env.dataDir
	cfg.Embedded.Sync = s.opts.EmbeddedSync
	cfg.NATS.URL = s.opts.NATSURL
	upstream := false
	if t, ok := s.opts.Registry.Lookup(spec.name); ok && t.Watermill && s.opts.BusDriver == config.DriverWatermill {
		cfg.Bus.Driver, upstream = config.DriverWatermill, true
	}
	if s.opts.Registry.Features(spec.name).Partitions && !upstream {
		// The others refuse the keys: they have no partitions to set.
		n := s.opts.Partitions
		if sc.partitions != nil {
			n = *sc.partitions
		}
		cfg.NATS.Partitions, cfg.Redis.Partitions = n, n
	}
	cfg.NATS.Stream = strings.ToUpper(env.id)
	cfg.NATS.SubjectPrefix = env.id
	cfg.NATS.Consumer = env.id
	cfg.Redis.URL = s.opts.RedisURL
	cfg.Redis.KeyPrefix = "millrace:" + env.id + ":"
	cfg.Postgres.URL = env.pgURL
	cfg.Dedup.Enabled = sc.dedupCache
	cfg.Cache.Enabled = sc.dedupCache && !sc.noCache
	for i, schema := range env.schemas {
		var src config.Source
		src.SetDefaults()
		src.Name = "bench"
		if len(env.schemas) > 1 {
			src.Name = fmt.Sprintf("bench_%c", 'a'+i)
		}
		src.PostgresURL = s.opts.PostgresURL
		src.Tables = []string{schema + "." + benchTable}
		src.Entities = map[string]string{schema + "." + benchTable: benchEntity}
		src.Install = true
		src.Schema = schema
		// Statement-level wake-ups: without them a change waits for the
		// next poll (100 ms), which is the whole latency budget.
		src.Notify = true
		if env.wal {
			src.Capture = config.CaptureWAL
			src.Slot, src.Publication = slotName(schema), slotName(schema)
		}
		cfg.Sources = append(cfg.Sources, src)
	}
	var o config.Observer
	o.SetDefaults()
	o.Actions = []config.Action{action}
	cfg.Observers = map[string]config.Observer{"bench": o}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return cfg, nil
}

// record routes the deliveries of run id to rec until the returned func
// is called.
func (s *suite) record(id string, rec *recorder) (stop func()) {
	s.mu.Lock()
	s.recorders[id] = rec
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.recorders, id)
		s.mu.Unlock()
	}
}

// runMillrace starts millrace on the run's config, pushes n events
// through it at rate (0: saturation) and returns when rec has them all.
// For the webhook scenario it returns how many deliveries were signed.
func (s *suite) runMillrace(ctx context.Context, spec topoSpec, sc scenarioSpec, rec *recorder, n, rate int, w *window) (signed *int64, err error) {
	env, err := s.prepare(ctx, spec, sc.wal)
	defer s.cleanup(spec, env)
	if err != nil {
		return nil, err
	}
	defer s.record(env.id, rec)()

	action := config.Action{"type": noopType, "run": env.id}
	var recv *receiver
	if sc.action == "webhook" {
		secret := make([]byte, 24)
		_, _ = rand.Read(secret)
		recv, err = startReceiver(rec, secret, s.logger)
		if err != nil {
			return nil, err
		}
		defer recv.close()
		// Secrets are never inline: the action reads the run's variable.
		name := "MILLRACE_BENCH_SECRET_" + strings.ToUpper(env.id)
		if err := os.Setenv(name, "whsec_"+base64.StdEncoding.EncodeToString(secret)); err != nil {
			return nil, err
		}
		defer os.Unsetenv(name)
		action = config.Action{"type": "webhook", "url": recv.url, "secret_env": name, "allow_private": true}
		defer func() {
			v := recv.signed.Load()
			signed = &v
		}()
	}
	cfg, err := s.config(spec, env, action, sc)
	if err != nil {
		return nil, err
	}
	if sc.prefilled {
		// The stream is filled before the router starts; the clock runs
		// from the router's start, so that its start-up counts.
		if err := s.prefill(ctx, cfg, n); err != nil {
			return nil, fmt.Errorf("prefill: %w", err)
		}
		w.begin()
		rec.started(time.Now())
	}
	ready := make(chan string, 1)
	r, err := router.New(cfg, router.Options{Actions: s.opts.Actions, Topologies: s.opts.Registry,
		Logger: s.logger.With("topology", spec.name, "run", env.id), Ready: ready})
	if err != nil {
		return nil, err
	}
	rctx, stop := context.WithCancel(ctx)
	stopped := make(chan struct{})
	var runErr error
	go func() {
		defer close(stopped)
		runErr = r.Run(rctx)
	}()
	defer func() {
		stop()
		select {
		case <-stopped:
		case <-time.After(cfg.Router.ShutdownTimeout.D() + 20*time.Second):
			err = errors.Join(err, errors.New("router did not stop"))
		}
	}()
	select {
	case <-ready:
	case <-stopped:
		return nil, fmt.Errorf("router stopped while starting: %w", runErr)
	case <-time.After(readyTimeout):
		return nil, fmt.Errorf("router not ready within %s", readyTimeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if sc.prefilled {
		err = wait(ctx, rec, w.limit, nil, stopped, func() error { return runErr })
		w.end()
		return nil, err
	}

	send := func(ctx context.Context, from, to int) error {
		now := time.Now()
		evs := make([]*event.Event, 0, to-from)
		for i := from; i < to; i++ {
			evs = append(evs, s.event(i, now))
		}
		return r.Publish(ctx, evs...)
	}
	var meter *writeMeter
	var pool *pgxpool.Pool
	if spec.capture() {
		if pool, err = s.postgres(ctx); err != nil {
			return nil, err
		}
		meter = &writeMeter{}
		send = meter.wrap(s.copySend(pool, env.schemas))
		pg0, srv0 := pgProcesses(ctx, pool), serverProcesses(s.servers())
		defer func() {
			w.end()
			w.capture = captureCost(captureMode(env), meter, pg0, pgProcesses(context.WithoutCancel(ctx), pool), srv0, reread(srv0))
		}()
	}
	w.begin()
	produced := make(chan error, 1)
	pctx, cancelProducer := context.WithCancel(ctx)
	defer cancelProducer()
	go func() { produced <- pace(pctx, rec, n, rate, send) }()
	err = wait(ctx, rec, w.limit, produced, stopped, func() error { return runErr })
	w.end()
	return nil, err
}
