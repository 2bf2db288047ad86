package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/internal/goruntime"
	"github.com/millrace/millrace/topologies"
)

// Defaults of Options.
const (
	DefaultEvents  = 50_000
	DefaultPayload = 500
	DefaultRate    = 1_000
	DefaultOutDir  = "bench"

	// QuickEvents and QuickSteadyEvents are the sizes of a --quick run:
	// enough to go through every code path, too few to mean anything.
	QuickEvents       = 200
	QuickSteadyEvents = 50

	// steadySeconds bounds the steady-rate run: min(Events, Rate x
	// steadySeconds) events.
	steadySeconds = 10
	// batchSize is the size of a publish batch, a COPY, a fetch.
	batchSize = 500
)

// Environment variables that point the suite at other servers than the
// local ones; the same the integration tests read.
const (
	PostgresURLEnv = "MILLRACE_TEST_POSTGRES_URL"
	RedisURLEnv    = "MILLRACE_TEST_REDIS_URL"
	NATSURLEnv     = "MILLRACE_TEST_NATS_URL"
)

// Default service URLs: the local servers test/services.sh runs.
const (
	DefaultPostgresURL = "postgres://root@127.0.0.1:5432/test?sslmode=disable"
	DefaultRedisURL    = "redis://127.0.0.1:6379/0"
	DefaultNATSURL     = "nats://127.0.0.1:4222"
)

// Options configure one run of the suite.
type Options struct {
	// Topologies to measure, in this order. Default: every topology
	// the suite knows (the package's Topologies); those not registered
	// in Registry are reported as not available.
	Topologies []string
	// Events is the number of change events of each saturation run.
	// Default 50,000.
	Events int
	// PayloadBytes is the size of each event's data. Default 500.
	PayloadBytes int
	// Rate is the rate of the steady-rate latency run, in events per
	// second; that run sends min(Events, 10 x Rate) events. Default 1,000.
	Rate int
	// OutDir receives results.json, RESULTS.md and chart.png. Default
	// "bench".
	OutDir string
	// Quick runs every scenario with QuickEvents events (and the steady
	// run with QuickSteadyEvents), for tests: the figures mean nothing.
	Quick bool
	// Budget, when set, bounds the whole suite: each saturated run gets
	// a share of the time left and, when it runs out, reports the
	// events delivered until then (time-boxed). Steady-rate runs keep
	// their length.
	Budget time.Duration
	// Partitions sets nats.partitions and redis.partitions of the runs
	// (0, the default: off), to measure the partitioned buses that keep
	// an entity's order across worker processes.
	Partitions int
	// EmbeddedSync is embedded.sync of the embedded topology's runs and
	// of the server of their ceiling: "always" (the default, as in
	// millrace's config) or the interval of the server's background
	// fsync, e.g. "2m", NATS's own default.
	EmbeddedSync string
	// BusDriver is bus.driver of the runs on the topologies that have an
	// upstream Watermill driver: "millrace" (the default) or "watermill"
	// (docs/drivers.md), whose runs have no partitions.
	BusDriver string
	// CPUProfile writes a CPU profile of each topology's no-op run to
	// OutDir/profiles and puts its top entries in the results.
	CPUProfile bool
	// Scenarios selects the runs, by name (Scenarios lists them): a
	// short run of one scenario is what an instruction count or a
	// profile of one path needs. Default: every one.
	Scenarios []string

	// Actions is the action registry the runs use. The suite adds its
	// "bench_noop" type to it, so it must be a registry of its own (start from
	// cli.Defaults()). Required.
	Actions *handlers.Registry
	// Registry holds the topologies available in this build. Required.
	Registry *topologies.Registry

	// Service URLs. Defaults: the MILLRACE_TEST_*_URL variables, else
	// the local servers.
	PostgresURL, RedisURL, NATSURL string

	// Logger receives the suite's and the routers' logs; nil discards.
	Logger *slog.Logger
	// Progress receives progress lines; nil shows none. When Terminal
	// is set the line is redrawn in place.
	Progress io.Writer
	Terminal bool
}

func (o *Options) setDefaults() {
	if len(o.Topologies) == 0 {
		o.Topologies = slices.Clone(Topologies)
	}
	if len(o.Scenarios) == 0 {
		// The workers job is opt-in.
		o.Scenarios = slices.DeleteFunc(slices.Clone(Scenarios), func(s string) bool { return s == ScenarioWorkers })
	}
	o.Events = cmp.Or(o.Events, DefaultEvents)
	o.PayloadBytes = cmp.Or(o.PayloadBytes, DefaultPayload)
	o.Rate = cmp.Or(o.Rate, DefaultRate)
	o.OutDir = cmp.Or(o.OutDir, DefaultOutDir)
	o.EmbeddedSync = cmp.Or(o.EmbeddedSync, config.SyncAlways)
	o.BusDriver = cmp.Or(o.BusDriver, config.DriverMillrace)
	o.PostgresURL = cmp.Or(o.PostgresURL, os.Getenv(PostgresURLEnv), DefaultPostgresURL)
	o.RedisURL = cmp.Or(o.RedisURL, os.Getenv(RedisURLEnv), DefaultRedisURL)
	o.NATSURL = cmp.Or(o.NATSURL, os.Getenv(NATSURLEnv), DefaultNATSURL)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

func (o Options) validate() error {
	var errs []error
	if o.Actions == nil || o.Registry == nil {
		errs = append(errs, errors.New("bench: Options.Actions and Options.Registry are required"))
	}
	for _, t := range o.Topologies {
		if _, ok := specs[t]; !ok {
			errs = append(errs, fmt.Errorf("bench: unknown topology %q (known: %s)", t, strings.Join(Topologies, ", ")))
		}
	}
	for _, sc := range o.Scenarios {
		if !slices.Contains(Scenarios, sc) {
			errs = append(errs, fmt.Errorf("bench: unknown scenario %q (known: %s)", sc, strings.Join(Scenarios, ", ")))
		}
	}
	if o.Events < 1 {
		errs = append(errs, fmt.Errorf("bench: events must be at least 1, got %d", o.Events))
	}
	if o.PayloadBytes < 1 || o.PayloadBytes > 1<<20 {
		errs = append(errs, fmt.Errorf("bench: payload must be between 1 byte and 1 MiB, got %d", o.PayloadBytes))
	}
	if o.Budget < 0 {
		errs = append(errs, fmt.Errorf("bench: budget must not be negative, got %s", o.Budget))
	}
	if o.Rate < 1 {
		errs = append(errs, fmt.Errorf("bench: rate must be at least 1 event/s, got %d", o.Rate))
	}
	if _, _, err := config.ParseSync(o.EmbeddedSync); err != nil {
		errs = append(errs, fmt.Errorf("bench: embedded sync: %w", err))
	}
	if o.BusDriver != config.DriverMillrace && o.BusDriver != config.DriverWatermill {
		errs = append(errs, fmt.Errorf("bench: bus driver must be %q or %q, got %q", config.DriverMillrace, config.DriverWatermill, o.BusDriver))
	}
	return errors.Join(errs...)
}

// events is the size of a saturation run, steadyEvents of the
// steady-rate run.
func (o Options) events() int {
	if o.Quick {
		return min(o.Events, QuickEvents)
	}
	return o.Events
}

func (o Options) steadyEvents() int {
	if o.Quick {
		return min(o.Events, QuickSteadyEvents)
	}
	return min(o.Events, o.Rate*steadySeconds)
}

// Result files written to OutDir.
const (
	ResultsJSON = "results.json"
	ResultsMD   = "RESULTS.md"
	ChartPNG    = "chart.png"
)

// suite is one run of the benchmark: its options, the shared clients it
// opens on first use, and the recorders of the runs in progress, which
// the noop action finds by run id.
type suite struct {
	opts   Options
	logger *slog.Logger
	prog   *progress
	filler string

	mu         sync.Mutex
	deadline   time.Time // of the budget; zero is none
	satLeft    int       // saturated runs not started yet
	steadyLeft int       // steady-rate runs not started yet
	recorders  map[string]*recorder
	streamIDs  []string // ids of the runs that made streams on the NATS server
	pool       *pgxpool.Pool
	rdb        *redis.Client
	nc         *nats.Conn
}

// Run measures every topology of opts and writes the result files. It
// returns the results even when some runs failed (their errors are in
// the results); the error is for what stopped the suite: bad options,
// ctx, or files that could not be written.
func Run(ctx context.Context, opts Options) (*Results, error) {
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	s := &suite{opts: opts, logger: opts.Logger, recorders: map[string]*recorder{}, filler: filler(opts.PayloadBytes)}
	if err := handlers.Register(opts.Actions, noopType, s.buildNoop); err != nil {
		return nil, fmt.Errorf("bench: %w (Options.Actions must be a registry of its own)", err)
	}
	defer s.close()
	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}

	res := newResults(opts)
	for _, t := range opts.Topologies {
		if s.selected(ScenarioCeiling) {
			s.satLeft++ // the ceiling, saturated and at a steady rate
			s.steadyLeft++
		}
		if !s.available(t) {
			continue
		}
		for _, sc := range scenarios {
			switch {
			case !s.selected(sc.name), !sc.applies(specs[t]), sc.action == "webhook" && !s.webhookAvailable():
			case sc.steady:
				s.steadyLeft++
			default:
				s.satLeft++
			}
		}
	}
	if s.peerSelected() {
		s.satLeft += 1 + len(peerRuns) // the peer job's ceiling and runs
	}
	if s.workersSelected() {
		s.satLeft += len(workerCounts)
	}
	if s.partitionCostSelected() && s.available(peerTopology) {
		s.satLeft += 2 * partitionCostRepeats
	}
	s.prog = &progress{w: opts.Progress, tty: opts.Terminal, total: s.satLeft + s.steadyLeft}
	start := time.Now()
	if opts.Budget > 0 && !opts.Quick {
		s.deadline = start.Add(opts.Budget)
	}
	for _, name := range opts.Topologies {
		if ctx.Err() != nil {
			break
		}
		res.Topologies = append(res.Topologies, s.topology(ctx, name))
	}
	if s.peerSelected() && ctx.Err() == nil {
		res.PeerJob = s.peerJob(ctx)
	}
	if s.workersSelected() && ctx.Err() == nil {
		res.Workers = s.workersJob(ctx)
	}
	if s.partitionCostSelected() && ctx.Err() == nil {
		res.PartitionCost = s.partitionCost(ctx)
	}
	res.DurationS = round3(time.Since(start).Seconds())
	res.Machine.LoadEnd = loadAverage()
	res.Targets = evaluate(res)
	werr := res.write(opts.OutDir)
	if err := ctx.Err(); err != nil {
		return res, errors.Join(fmt.Errorf("bench: interrupted: %w", err), werr)
	}
	return res, werr
}

func (s *suite) available(topology string) bool {
	return slices.Contains(s.opts.Registry.Names(), topology)
}

// selected reports whether the run of scenario is asked for.
func (s *suite) selected(scenario string) bool {
	return slices.Contains(s.opts.Scenarios, scenario)
}

func (s *suite) webhookAvailable() bool {
	return slices.Contains(s.opts.Actions.Names(), "webhook")
}

func (s *suite) close() {
	s.sweepStreams()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pool != nil {
		s.pool.Close()
	}
	if s.rdb != nil {
		_ = s.rdb.Close()
	}
	if s.nc != nil {
		s.nc.Close()
	}
}

// postgres returns the suite's pool, opened on first use.
func (s *suite) postgres(ctx context.Context) (*pgxpool.Pool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pool != nil {
		return s.pool, nil
	}
	cfg, err := pgxpool.ParseConfig(s.opts.PostgresURL)
	if err != nil {
		return nil, fmt.Errorf("postgres url: %w", err)
	}
	cfg.MaxConns = 8
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p, err := pgxpool.NewWithConfig(cctx, cfg)
	if err == nil {
		err = p.Ping(cctx)
	}
	if err != nil {
		if p != nil {
			p.Close()
		}
		return nil, fmt.Errorf("postgres: %w", err)
	}
	s.pool = p
	return p, nil
}

// redis returns the suite's Redis client, opened on first use.
func (s *suite) redis(ctx context.Context) (*redis.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rdb != nil {
		return s.rdb, nil
	}
	o, err := redis.ParseURL(s.opts.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	c := redis.NewClient(o)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Ping(cctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("redis: %w", err)
	}
	s.rdb = c
	return c, nil
}

// nats returns the suite's connection to the NATS server, opened on
// first use.
func (s *suite) nats() (*nats.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nc != nil {
		return s.nc, nil
	}
	nc, err := nats.Connect(s.opts.NATSURL, nats.Name("millrace-bench"), nats.Timeout(10*time.Second))
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	s.nc = nc
	return nc, nil
}

// Shares of the budget.
const (
	// runOverhead is what a run costs beyond the wait for its events:
	// starting and stopping the router or the ceiling's server.
	runOverhead = 5 * time.Second
	// minLimit is the least a saturated run gets, whatever is left.
	minLimit = 5 * time.Second
)

// limit counts a run as started and returns how long it may wait for its
// events: 0 (no limit) for a steady-rate run or without a budget, else
// an equal share of the time left after the steady-rate runs still to
// come.
func (s *suite) limit(steady bool) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if steady {
		s.steadyLeft--
	} else {
		s.satLeft--
	}
	if s.deadline.IsZero() || steady {
		return 0
	}
	runs := time.Duration(s.satLeft + 1)
	steadyRun := time.Duration(s.opts.steadyEvents())*time.Second/time.Duration(s.opts.Rate) + runOverhead
	left := time.Until(s.deadline) - time.Duration(s.steadyLeft)*steadyRun - runs*runOverhead
	return max(left/runs, minLimit)
}

// madeStreams notes that run id made streams on the NATS server, for
// the sweep at the end.
func (s *suite) madeStreams(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streamIDs = append(s.streamIDs, id)
}

// sweepStreams deletes the streams of the suite's runs that are still on
// the NATS server: a delete that failed under load is tried again.
func (s *suite) sweepStreams() {
	s.mu.Lock()
	ids := s.streamIDs
	s.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	nc, err := s.nats()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := deleteStreams(ctx, nc, ids...); err != nil {
		s.logger.Error("bench: streams left on the NATS server", "err", err)
	}
}

// deleteStreams deletes every stream whose name holds one of ids.
func deleteStreams(ctx context.Context, nc *nats.Conn, ids ...string) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	var drop []string
	names := js.StreamNames(ctx)
	for n := range names.Name() {
		l := strings.ToLower(n)
		for _, id := range ids {
			if strings.Contains(l, id) {
				drop = append(drop, n)
				break
			}
		}
	}
	errs := []error{names.Err()}
	for _, n := range drop {
		if err := js.DeleteStream(ctx, n); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			errs = append(errs, fmt.Errorf("delete stream %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// freeMemory returns the heap of earlier runs to the OS, so that a run's
// peak RSS is its own.
func freeMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}

// filler is the text that pads each event's data to about n bytes.
func filler(n int) string {
	const overhead = len(`{"id":10000,"n":10000,"payload":""}`)
	const text = "millrace turns database changes into actions. "
	k := max(n-overhead, 0)
	return strings.Repeat(text, k/len(text)+1)[:k]
}

// profilePath is where the CPU profile of the run called name goes, or
// "" when the suite profiles nothing (no --cpuprofile, or --quick).
func (s *suite) profilePath(name string) string {
	if !s.opts.CPUProfile || s.opts.Quick {
		return ""
	}
	return filepath.Join(s.opts.OutDir, "profiles", name+".pprof")
}

// goRuntime applies the Go runtime settings a `millrace run` of topology
// would run with (the default config's, the topology's garbage
// collector target, the environment's GOGC and GOMEMLIMIT) to this
// process, where that topology's runs and its ceiling then run, and
// describes them.
func (s *suite) goRuntime(topology string) string {
	t, _ := s.opts.Registry.Lookup(topology)
	rs, err := goruntime.Apply(config.Default().Runtime, t.GCPercent, os.Getenv)
	if err != nil {
		return "not applied: " + err.Error()
	}
	return rs.String()
}
