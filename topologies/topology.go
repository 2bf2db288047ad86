package topologies

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/middleware"
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
	DeadLetters middleware.DeadLetters
	// Dedup and Cache are the topology's dedup ledger and result cache,
	// used when dedup.store and cache.store are empty; nil means in
	// memory. The topology closes them (Closers) when they need it.
	Dedup middleware.DedupStore
	Cache middleware.ResultCache
	// Closers run in reverse order at shutdown, after the router stopped.
	Closers []func() error
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

// Registry maps topology names to builders.
type Registry struct{ m map[string]BuildFunc }

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{m: map[string]BuildFunc{}} }

// Register adds a topology; a name may be registered once.
func (r *Registry) Register(name string, build BuildFunc) error {
	if _, dup := r.m[name]; dup {
		return fmt.Errorf("register topology %q: already registered", name)
	}
	r.m[name] = build
	return nil
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

// Check reports a config error when cfg's topology is not registered.
func (r *Registry) Check(cfg *config.Config) error {
	if _, ok := r.m[cfg.Topology]; !ok {
		return config.Errorf("topology", "%q is not available yet in this build (available: %v)", cfg.Topology, r.Names())
	}
	return nil
}

// Build builds cfg's topology.
func (r *Registry) Build(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*Backend, error) {
	if err := r.Check(cfg); err != nil {
		return nil, err
	}
	b, err := r.m[cfg.Topology](ctx, cfg, logger)
	if err != nil {
		return nil, fmt.Errorf("topology %s: %w", cfg.Topology, err)
	}
	return b, nil
}
