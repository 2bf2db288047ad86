package topologies

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/millrace/millrace/stores"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/millrace/millrace/config"
)

// Backend is what a topology provides to the router.
type Backend struct {
	// Publisher and Subscriber carry events on the bus. The subscriber
	// releases messages of one entity in order and acks only what the
	// router acked.
	Publisher  message.Publisher
	Subscriber message.Subscriber
	// Captures are the change-log readers of the topology's sources, by
	// source name. A process whose role includes capture runs one router
	// handler per capture, forwarding its messages to Publisher on the
	// events topic. A topology whose bus is the change log itself leaves
	// this empty and reads it through Subscriber.
	Captures map[string]message.Subscriber
	// Ready reports whether the services the process needs answer: the
	// bus, and the sources when it captures. Its error names the one that
	// does not (a *DependencyError).
	Ready func(ctx context.Context) error
	// DeadLetters is the topology's durable dead-letter store.
	DeadLetters stores.DeadLetters
	// Dedup and Cache are the topology's dedup ledger and result cache,
	// used when dedup.store and cache.store are empty; nil means in
	// memory. The topology closes them (Closers) when they need it.
	Dedup stores.DedupStore
	Cache stores.ResultCache
	// Closers run in reverse order at shutdown, after the router stopped.
	Closers []func() error
	// Record reads the events already on the bus, oldest first, and
	// calls fn with each payload, without disturbing the consumers: no
	// consumer group, no acks, no checkpoint. GET /v1/record serves it
	// for a bus that lives inside the process (embedded), which
	// `millrace record` cannot reach otherwise. nil: the topology's bus
	// is recorded from outside.
	Record func(ctx context.Context, span RecordSpan, fn func(payload []byte) error) error
	// Collectors are the backend's own metrics (the WAL captures'
	// retained WAL); the router registers them beside its own.
	Collectors []prometheus.Collector
	// Lag, when set, reports how far each consumer of the bus is behind
	// its head (the console's bus health page); nil when the topology
	// cannot tell.
	Lag func(ctx context.Context) ([]Lag, error)
}

// RecordSpan is the part of the bus Backend.Record reads.
type RecordSpan struct {
	// FromSeq, when above 0, starts after this bus position (a stream
	// sequence); else Since, when not zero, starts at the first event
	// that reached the bus then or later; else the first event.
	FromSeq uint64
	Since   time.Time
	// Limit caps the events read; 0 reads up to those that were last
	// when the read began (and those tapped until Until).
	Limit int
	// Until, when after now, keeps the read going once it reached the
	// end: the events that arrive are read too, until that time.
	Until time.Time
}

// Close runs the closers in reverse order and joins their errors.
func (b *Backend) Close() error {
	var errs []error
	for i := len(b.Closers) - 1; i >= 0; i-- {
		errs = append(errs, b.Closers[i]())
	}
	b.Closers = nil
	return errors.Join(errs...)
}

// DependencyError says that a service the config names did not answer.
// It names the service, the address (its password masked) and the config
// key the address came from, because a typo in a URL or a service that
// starts later than millrace are the usual causes, and the user must see
// which. The router retries a build that fails with it while
// router.startup_timeout lasts.
type DependencyError struct {
	// Service is "postgres", "redis" or "nats".
	Service string
	// Op is what failed: "connect" at start-up, "ping" once running.
	Op string
	// Addr is the URL, its password masked.
	Addr string
	// Key is the config key of the URL, e.g. "nats.url" or
	// "sources[0].postgres_url_env=ORDERS_DB_URL".
	Key string
	Err error
}

// Unreachable returns a *DependencyError for service at rawURL.
func Unreachable(service, op, key, rawURL string, err error) error {
	return &DependencyError{Service: service, Op: op, Addr: config.MaskURL(rawURL), Key: key, Err: err}
}

// Error reads "nats: connect nats://127.0.0.1:1 (nats.url): <reason>".
func (e *DependencyError) Error() string {
	return fmt.Sprintf("%s: %s %s (%s): %v", e.Service, e.Op, e.Addr, e.Key, e.Err)
}

func (e *DependencyError) Unwrap() error { return e.Err }

// BuildFunc builds a topology's backend. It owns what it opens: on error
// it closes it; on success Backend.Close does. ctx bounds the build only
// (the router gives it the start-up deadline), so nothing the backend
// runs afterwards may keep it. An error that only means a
// service did not answer is (or wraps) a *DependencyError, so that the
// router waits for the service instead of failing at once.
type BuildFunc func(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*Backend, error)

// Topology is one entry of the registry: the value of the topology key
// that picks it, how to check and build it, and what it provides.
type Topology struct {
	// Name is the value of the topology key. It must match
	// ^[a-z0-9]+(_[a-z0-9]+)*$.
	Name string
	// Build builds the backend. Required.
	Build BuildFunc
	// Validate checks the sections of the config that the topology uses
	// (its own, and [[sources]] or [redis] where it needs them) without
	// I/O and without reading the environment, and returns every
	// problem joined, each a *config.Error with its key path. Optional;
	// it runs after config.Config.Validate, which checks what every
	// topology shares.
	Validate func(cfg *config.Config) error
	// Features is what the topology provides; actions check it at
	// validate time (handlers.ConfigChecker).
	Features config.Features
	// Notes, when set, returns what the topology cannot check about the
	// services cfg names and a user should know, each naming its key
	// path: `millrace validate` prints them and `millrace run` logs
	// them as warnings. Optional; no I/O.
	Notes func(cfg *config.Config) []string
	// Watermill says that Build also builds the bus from the upstream
	// Watermill Pub/Sub of its broker when bus.driver is "watermill";
	// Check refuses that driver on a topology without it.
	Watermill bool
	// GCPercent is the garbage collector's target of the processes that
	// run the topology, where neither runtime.gc_percent nor GOGC sets
	// one (package goruntime). 0: Go's default, 100.
	GCPercent int
}

// ServicesGCPercent is the garbage collector's target on the topologies
// whose bus and stores are services (redis, nats, multidb). Their
// processes keep a small live heap and allocate quickly, so at Go's
// default they collect several times a second; 400 cut the CPU per
// event of the nats capture runs by 15 to 22 % in the bench (redis 3 to
// 5 %), for 20 to 35 MB more resident memory (docs/performance.md,
// "Garbage collection").
const ServicesGCPercent = 400

// Registry maps topology names to their entries. It is a value: cmd/
// fills one with the built-in topologies (cli.Defaults), a custom binary
// adds its own, tests start from an empty one. It is not safe for
// concurrent registration.
type Registry struct{ m map[string]Topology }

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{m: map[string]Topology{}} }

var nameRE = regexp.MustCompile(`^[a-z0-9]+(_[a-z0-9]+)*$`)

// Register adds a topology; a name may be registered once.
func (r *Registry) Register(t Topology) error {
	switch {
	case !nameRE.MatchString(t.Name):
		return fmt.Errorf("register topology %q: name must match %s", t.Name, nameRE)
	case t.Build == nil:
		return fmt.Errorf("register topology %q: nil build function", t.Name)
	}
	if _, dup := r.m[t.Name]; dup {
		return fmt.Errorf("register topology %q: already registered", t.Name)
	}
	r.m[t.Name] = t
	return nil
}

// MustRegister is Register that panics; use it only at start-up.
func (r *Registry) MustRegister(t Topology) {
	if err := r.Register(t); err != nil {
		panic(err)
	}
}

// Names returns the registered names, sorted.
func (r *Registry) Names() []string {
	out := make([]string, 0, len(r.m))
	for n := range r.m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Lookup returns the entry registered under name.
func (r *Registry) Lookup(name string) (Topology, bool) {
	t, ok := r.m[name]
	return t, ok
}

// Features returns the features of the topology registered under name;
// the zero value, which provides nothing, when there is none.
func (r *Registry) Features(name string) config.Features { return r.m[name].Features }

// Notes returns the notes of cfg's topology (Topology.Notes), or none.
func (r *Registry) Notes(cfg *config.Config) []string {
	if t, ok := r.m[cfg.Topology]; ok && t.Notes != nil {
		return t.Notes(cfg)
	}
	return nil
}

// Check reports a config error when cfg's topology is not registered,
// and otherwise every problem the topology's Validate finds, and the
// partitions asked of a topology whose Features have none.
func (r *Registry) Check(cfg *config.Config) error {
	t, ok := r.m[cfg.Topology]
	if !ok {
		return config.Errorf("topology", "%q is not one of %s (the topologies of this build)", cfg.Topology, strings.Join(r.Names(), ", "))
	}
	var errs []error
	if t.Validate != nil {
		errs = append(errs, t.Validate(cfg))
	}
	upstream := cfg.Bus.Driver == config.DriverWatermill
	if upstream && !t.Watermill {
		errs = append(errs, config.Errorf("bus.driver", "%q: the %s topology has no Watermill driver (use %q)",
			cfg.Bus.Driver, cfg.Topology, config.DriverMillrace))
	}
	if !t.Features.Partitions || upstream {
		// Ignored, they would promise an order across worker processes
		// that the topology does not keep.
		for _, p := range []struct {
			key string
			n   int
		}{{"nats.partitions", cfg.NATS.Partitions}, {"redis.partitions", cfg.Redis.Partitions}} {
			switch {
			case p.n == 0:
			case upstream && t.Features.Partitions:
				errs = append(errs, config.Errorf(p.key, "is %d, but bus.driver %q has no partitions (leave it 0, or use the %q driver)",
					p.n, cfg.Bus.Driver, config.DriverMillrace))
			default:
				errs = append(errs, config.Errorf(p.key, "is %d, but the %s topology has no partitions (leave it 0)", p.n, cfg.Topology))
			}
		}
	}
	return errors.Join(errs...)
}

// Build checks cfg and builds its topology.
func (r *Registry) Build(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*Backend, error) {
	if err := r.Check(cfg); err != nil {
		return nil, err
	}
	b, err := r.m[cfg.Topology].Build(ctx, cfg, logger)
	if err != nil {
		return nil, fmt.Errorf("topology %s: %w", cfg.Topology, err)
	}
	return b, nil
}

// MaxPartitions bounds [nats|redis].partitions: each partition is a
// consumer (or stream) and a lease of its own.
const MaxPartitions = 1024

// CheckPartitions checks the partitions and partition_ttl keys of a
// section ("nats", "redis") of a topology whose bus has partitions.
func CheckPartitions(section string, n int, ttl config.Duration) error {
	var errs []error
	if n < 0 || n > MaxPartitions {
		errs = append(errs, config.Errorf(section+".partitions", "must be between 0 (off) and %d, got %d", MaxPartitions, n))
	}
	if n > 0 && ttl.D() < time.Second {
		errs = append(errs, config.Errorf(section+".partition_ttl", "must be at least 1s, got %s", ttl.D()))
	}
	return errors.Join(errs...)
}
