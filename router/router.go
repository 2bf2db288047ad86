package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmetrics "github.com/ThreeDotsLabs/watermill/components/metrics"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/jetstream"
)

// Options are the parts of a Router that do not come from the config.
type Options struct {
	// Actions holds the action types observers may use.
	Actions *handlers.Registry
	// Topologies holds the topologies the config may pick.
	Topologies *topologies.Registry
	// Logger; nil discards.
	Logger *slog.Logger
	// Ready, when set, receives the HTTP server's address once the router
	// serves (tests listen on port 0).
	Ready chan<- string
}

// Router is one millrace process: bus, observers and HTTP server.
type Router struct {
	cfg     *config.Config
	opts    Options
	logger  *slog.Logger
	metrics *Metrics

	backend   *topologies.Backend
	observers []*handlers.Observer
	matcher   *handlers.Matcher
	wm        *message.Router
	http      *http.Server
	listener  net.Listener
}

// New checks the config against the registries and builds nothing yet.
func New(cfg *config.Config, opts Options) (*Router, error) {
	if opts.Actions == nil || opts.Topologies == nil {
		return nil, errors.New("router: Options.Actions and Options.Topologies are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := errors.Join(opts.Topologies.Check(cfg), handlers.Check(cfg, opts.Actions)); err != nil {
		return nil, err
	}
	return &Router{cfg: cfg, opts: opts, logger: opts.Logger, metrics: NewMetrics()}, nil
}

// Metrics returns the router's metrics.
func (r *Router) Metrics() *Metrics { return r.metrics }

// Run builds the backend and the observers, serves HTTP and consumes the
// bus until ctx ends; then it stops taking new work, drains in-flight
// messages within router.shutdown_timeout and returns. It returns nil on
// a clean shutdown.
func (r *Router) Run(ctx context.Context) (err error) {
	cfg := r.cfg
	backend, err := r.opts.Topologies.Build(ctx, cfg, r.logger)
	if err != nil {
		return err
	}
	r.backend = backend
	defer func() { err = errors.Join(err, backend.Close()) }()

	res := &resources{cfg: cfg}
	defer func() { err = errors.Join(err, res.Close()) }()
	deps := handlers.Deps{Logger: r.logger, Config: cfg, Publish: r.publishRaw, Redis: res.Redis, Database: res.Database}
	r.observers, err = handlers.Compile(ctx, cfg, r.opts.Actions, deps)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, handlers.CloseAll(r.observers)) }()
	r.matcher = handlers.NewMatcher(r.observers)

	wm, err := message.NewRouter(message.RouterConfig{CloseTimeout: cfg.Router.ShutdownTimeout.D()},
		watermill.NewSlogLoggerWithLevelMapping(r.logger.With("component", "watermill"), map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug}))
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	r.wm = wm
	wmetrics.NewPrometheusMetricsBuilder(r.metrics.Registry, "", "").AddPrometheusRouterMetrics(wm)
	if cfg.Role != "observe" {
		// Capture: change log → bus. The message keeps its UUID (the
		// change id), so a republished change is dropped by the bus or
		// by dedup.
		for name, sub := range backend.Captures {
			wm.AddHandler("capture_"+name, cfg.Router.Topic, sub, cfg.Router.Topic, backend.Publisher, message.PassthroughHandler)
		}
	}
	if cfg.Role != "capture" {
		wm.AddConsumerHandler("observe", cfg.Router.Topic, backend.Subscriber, r.observe)
	}

	ln, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("http: listen %s: %w", cfg.HTTP.Addr, err)
	}
	r.listener = ln
	r.http = &http.Server{Handler: r.Handler(), ReadHeaderTimeout: cfg.HTTP.ReadTimeout.D(), ReadTimeout: cfg.HTTP.ReadTimeout.D()}

	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := r.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	}()
	runCtx, stopRouter := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRouter()
	go func() {
		defer wg.Done()
		if err := wm.Run(runCtx); err != nil {
			errc <- fmt.Errorf("router: %w", err)
		}
	}()
	select {
	case <-wm.Running():
	case err := <-errc:
		_ = r.http.Close()
		_ = wm.Close()
		wg.Wait()
		return err
	}
	r.logger.Info("millrace running", "topology", cfg.Topology, "role", cfg.Role, "http", ln.Addr().String(), "observers", len(r.observers))
	if r.opts.Ready != nil {
		r.opts.Ready <- ln.Addr().String()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	r.logger.Info("shutting down", "drain_timeout", cfg.Router.ShutdownTimeout.String())
	start := time.Now()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Router.ShutdownTimeout.D())
	defer cancel()
	// Stop taking events first, then drain the bus.
	_ = r.http.Shutdown(sctx)
	if err := wm.Close(); err != nil {
		runErr = errors.Join(runErr, err)
	}
	stopRouter()
	wg.Wait()
	r.logger.Info("stopped", "took", time.Since(start).Round(time.Millisecond).String())
	return runErr
}

// Publish puts events on the bus topic, each with its id as message UUID
// and its ordering key.
func (r *Router) Publish(ctx context.Context, evs ...*event.Event) error {
	msgs := make([]*message.Message, 0, len(evs))
	for _, ev := range evs {
		b, err := event.Encode(ev)
		if err != nil {
			return fmt.Errorf("encode event %s: %w", ev.ID, err)
		}
		m := message.NewMessageWithContext(ctx, ev.ID, b)
		m.Metadata.Set(jetstream.KeyMetadata, ev.Key())
		m.Metadata.Set(jetstream.SubjectMetadata, jetstream.Token(ev.Source)+"."+jetstream.Token(ev.Entity)+"."+string(ev.Type))
		msgs = append(msgs, m)
	}
	return r.backend.Publisher.Publish(r.cfg.Router.Topic, msgs...)
}

func (r *Router) publishRaw(ctx context.Context, topic, id string, payload []byte) error {
	m := message.NewMessageWithContext(ctx, id, payload)
	return r.backend.Publisher.Publish(topic, m)
}

// observe is the bus handler: decode, match, run each matching observer.
func (r *Router) observe(msg *message.Message) error {
	ctx := msg.Context()
	ev, err := event.Decode(msg.Payload)
	if err != nil {
		r.metrics.Events.WithLabelValues("undecodable").Inc()
		r.logger.ErrorContext(ctx, "undecodable event dropped", "uuid", msg.UUID, "err", err, "bytes", len(msg.Payload))
		return nil
	}
	sum := r.handle(ctx, ev)
	if !ev.Timestamp.IsZero() {
		r.metrics.EventLatency.Observe(time.Since(ev.Timestamp).Seconds())
	}
	r.logger.DebugContext(ctx, "event handled", "event_id", ev.ID, "event_type", ev.Type, "entity_type", ev.Entity,
		"entity_id", ev.EntityID, "summary", sum)
	if sum.Err != nil {
		r.metrics.Events.WithLabelValues("failed").Inc()
		r.logger.WarnContext(ctx, "event failed; it will be redelivered", "event_id", ev.ID, "err", sum.Err)
		return sum.Err
	}
	r.metrics.Events.WithLabelValues("handled").Inc()
	return nil
}

// Summary is what happened to one event.
type Summary struct {
	Matched          int   `json:"matched"`
	SkippedCondition int   `json:"skipped_condition"`
	Succeeded        int   `json:"succeeded"`
	Failed           int   `json:"failed"`
	DuplicateSkipped int   `json:"duplicate_skipped"`
	ActionsRun       int   `json:"actions_run"`
	CacheHits        int   `json:"cache_hits"`
	CacheMisses      int   `json:"cache_misses"`
	Err              error `json:"-"`
}

// LogValue renders the summary as a group in logs.
func (s Summary) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int("matched", s.Matched), slog.Int("skipped_condition", s.SkippedCondition),
		slog.Int("succeeded", s.Succeeded), slog.Int("failed", s.Failed),
		slog.Int("duplicate_skipped", s.DuplicateSkipped), slog.Int("actions_run", s.ActionsRun),
		slog.Int("cache_hits", s.CacheHits), slog.Int("cache_misses", s.CacheMisses))
}

func (r *Router) handle(ctx context.Context, ev *event.Event) Summary {
	var sum Summary
	obs := r.matcher.Match(ev)
	sum.Matched = len(obs)
	var errs []error
	for _, o := range obs {
		ok, err := o.Accepts(ev)
		if err != nil {
			sum.Failed++
			r.metrics.Observers.WithLabelValues(o.Name, "failed").Inc()
			r.logger.ErrorContext(ctx, "condition failed", "observer", o.Name, "event_id", ev.ID, "err", err)
			continue
		}
		if !ok {
			sum.SkippedCondition++
			r.metrics.Observers.WithLabelValues(o.Name, "skipped_condition").Inc()
			continue
		}
		err = o.Run(ctx, ev, func(ctx context.Context, ev *event.Event, b *handlers.Bound) error {
			start := time.Now()
			err := b.Execute(ctx, ev)
			id := fmt.Sprintf("%d:%s", b.Index, b.Spec.Type)
			r.metrics.ActionDuration.WithLabelValues(o.Name, id).Observe(time.Since(start).Seconds())
			result := "succeeded"
			if err != nil {
				result = "failed"
			}
			r.metrics.Actions.WithLabelValues(o.Name, id, result).Inc()
			return err
		})
		sum.ActionsRun += len(o.Actions)
		if err != nil {
			sum.Failed++
			r.metrics.Observers.WithLabelValues(o.Name, "failed").Inc()
			errs = append(errs, fmt.Errorf("observer %q: %w", o.Name, err))
			continue
		}
		sum.Succeeded++
		r.metrics.Observers.WithLabelValues(o.Name, "succeeded").Inc()
	}
	sum.Err = errors.Join(errs...)
	return sum
}
