package router

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/engine"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/middleware"
	"github.com/millrace/millrace/stores"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/tracing"
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
	// Listening, when set, is called with the HTTP server's address as
	// soon as it listens, before the backend is built: /healthz and
	// /readyz answer from then on (`millrace run --addr-file`).
	Listening func(addr string) error
	// TracerProvider, when set and tracing.enabled is true, receives the
	// spans instead of an OTLP exporter (tests record them in process).
	TracerProvider trace.TracerProvider
}

// Router is one millrace process: bus, observers and HTTP server.
type Router struct {
	cfg     *config.Config
	opts    Options
	logger  *slog.Logger
	metrics *Metrics

	backend   *topologies.Backend
	observers []*engine.Observer
	byName    map[string]*engine.Observer
	matcher   *engine.Matcher
	policy    *middleware.Policy
	stacks    map[string]message.HandlerFunc // by observer
	runs      map[string]map[string]prometheus.Counter
	handled   prometheus.Counter
	wm        *message.Router
	http      *http.Server
	listener  net.Listener
	auth      *ingestAuth
	// recent keeps the last deliveries of each observer for the
	// console; nil when http.console is off.
	recent *recentDeliveries
	// tracer makes the spans of each event; nil when tracing is off,
	// and then no span and no context is made (see package tracing).
	tracer *tracing.Tracer

	// started is closed once backend is set: the HTTP server runs before
	// (see Run), and its handlers use backend only after this.
	started chan struct{}
	// running is closed once the Watermill router runs, after the
	// parked entities were loaded: /readyz answers 200 only then.
	running chan struct{}
	mu      sync.Mutex
	waiting error // why the backend is not built yet
}

// New checks the config against the registries and builds nothing yet.
func New(cfg *config.Config, opts Options) (*Router, error) {
	if opts.Actions == nil || opts.Topologies == nil {
		return nil, errors.New("router: Options.Actions and Options.Topologies are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := Check(cfg, opts.Actions, opts.Topologies); err != nil {
		return nil, err
	}
	auth, err := newIngestAuth(cfg.HTTP, os.LookupEnv)
	if err != nil {
		return nil, err
	}
	r := &Router{cfg: cfg, opts: opts, logger: opts.Logger, metrics: NewMetrics(), auth: auth, started: make(chan struct{}), running: make(chan struct{})}
	if cfg.HTTP.Console {
		r.recent = newRecentDeliveries()
	}
	return r, nil
}

// Metrics returns the router's metrics.
func (r *Router) Metrics() *Metrics { return r.metrics }

// Run serves HTTP, builds the backend (waiting up to
// router.startup_timeout for the services it needs) and the observers,
// and consumes the bus until ctx ends; then it stops taking new work,
// drains in-flight messages within router.shutdown_timeout and returns.
// It returns nil on a clean shutdown, and an error wrapping a
// *topologies.DependencyError when a service did not answer in time.
func (r *Router) Run(ctx context.Context) (err error) {
	cfg := r.cfg
	tracer, shutdownTracing, err := tracing.Setup(ctx, cfg.Tracing, r.opts.TracerProvider)
	if err != nil {
		return err
	}
	r.tracer = tracer
	defer func() {
		// Flushes the spans still batched, within the drain's bound.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Router.ShutdownTimeout.D())
		defer cancel()
		if err := shutdownTracing(sctx); err != nil {
			r.logger.Warn("tracing: spans not exported at shutdown", "err", err)
		}
	}()
	// The HTTP server comes first, so that /healthz and /readyz answer
	// while the backend waits for its services (an orchestrator must not
	// kill a process that waits, nor send it traffic).
	ln, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("http: listen %s: %w", cfg.HTTP.Addr, err)
	}
	r.listener = ln
	r.logger.Info("http listening", "addr", ln.Addr().String())
	if r.opts.Listening != nil {
		if err := r.opts.Listening(ln.Addr().String()); err != nil {
			_ = ln.Close()
			return err
		}
	}
	r.http = &http.Server{Handler: r.Handler(), ReadHeaderTimeout: cfg.HTTP.ReadTimeout.D(), ReadTimeout: cfg.HTTP.ReadTimeout.D()}
	var serving sync.WaitGroup
	errc := make(chan error, 2)
	serving.Go(func() {
		if err := r.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	})
	closeHTTP := func() { _ = r.http.Close(); serving.Wait() }

	backend, err := r.build(ctx)
	if backend == nil {
		closeHTTP()
		if ctx.Err() != nil {
			// Stopped (SIGTERM, Ctrl-C) while waiting for a service or
			// building: a clean stop, not a failed start.
			r.logger.Info("stopped before the backend was ready", "reason", err)
			return nil
		}
		return err
	}
	r.countDeadLetters(backend)
	if r.tracer != nil {
		// Every publish, captured changes, ingest, replays and publish
		// actions alike, carries the trace context across the bus.
		backend.Publisher = r.tracer.Publisher(backend.Publisher)
	}
	r.backend = backend
	close(r.started)
	defer func() { err = errors.Join(err, backend.Close()) }()
	// Deferred after backend.Close, so it runs before: no request uses
	// the backend while it closes.
	defer closeHTTP()

	res := &resources{cfg: cfg}
	defer func() { err = errors.Join(err, res.Close()) }()
	dedup, cache, closeStores, err := r.openStores(ctx, backend, res)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, closeStores()) }()
	r.policy = &middleware.Policy{Config: cfg, DeadLetters: backend.DeadLetters, Metrics: r.metrics.Delivery, Tracer: r.tracer,
		Logger: r.logger, Breakers: middleware.NewBreakers(middleware.BreakerConfigOf(cfg.Breaker), middleware.BreakerFailure),
		Limits: middleware.NewLimits(limitConfig(cfg.Delivery))}
	if err := r.loadParks(ctx); err != nil {
		return err
	}
	defer r.metrics.Registry.Unregister(r.policy.Parks)
	if cfg.Dedup.Enabled || cfg.Cache.Enabled {
		r.policy.Ledger = middleware.NewLedger(dedup, cache, middleware.LedgerConfig{Window: cfg.Dedup.Window.D(), TTL: cfg.Cache.TTL.D(), Lease: cfg.Dedup.Lease.D()},
			r.metrics.Delivery, r.logger.With("component", "ledger"))
	}
	if err := r.metrics.Registry.Register(r.policy.Breakers); err != nil {
		return fmt.Errorf("router: breaker metrics: %w", err)
	}
	defer r.metrics.Registry.Unregister(r.policy.Breakers)
	if err := r.metrics.Registry.Register(r.policy.Limits); err != nil {
		return fmt.Errorf("router: endpoint limit metrics: %w", err)
	}
	defer r.metrics.Registry.Unregister(r.policy.Limits)
	for _, c := range backend.Collectors {
		if err := r.metrics.Registry.Register(c); err != nil {
			return fmt.Errorf("router: backend metrics: %w", err)
		}
		defer r.metrics.Registry.Unregister(c)
	}
	deps := handlers.Deps{Logger: r.logger, Config: cfg, Publish: r.publishRaw, Redis: res.Redis, Database: res.Database}
	r.observers, err = engine.Compile(ctx, cfg, r.opts.Actions, deps)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, engine.CloseAll(r.observers)) }()
	if err := r.policy.ConfigureBreakers(r.observers); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	r.compile()

	wm, err := message.NewRouter(message.RouterConfig{CloseTimeout: cfg.Router.ShutdownTimeout.D()},
		wmLogger{r.logger.With("component", "watermill")})
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	r.wm = wm
	// Watermill's router metrics: the handlers' and subscribers', and
	// the publish times of captured changes, are counted in each handler
	// (handlerMetrics).
	hm, err := newHandlerMetrics(r.metrics.Registry)
	if err != nil {
		return err
	}
	if cfg.Role != "observe" && len(backend.Captures) > 0 {
		// Capture: change log → bus. The message keeps its UUID (the
		// change id), so a republished change is dropped by the bus or
		// by dedup. The handler publishes it itself, on a worker of its
		// stacks, rather than returning it for Watermill to publish in
		// its goroutine per message, whose stack the publish outgrows.
		topic := cfg.Router.Topic
		for name, sub := range backend.Captures {
			st := newStacks(cfg.Router.MaxInFlight)
			defer st.close()
			handler := "capture_" + name
			h := wm.AddConsumerHandler(handler, topic, sub, hm.forward(handler, topic, backend.Publisher))
			h.AddMiddleware(st.middleware, hm.middleware(handler, sub))
			if r.tracer != nil {
				h.AddMiddleware(r.tracer.Capture(name, r.walSource(name)))
			}
		}
	}
	if cfg.Role != "capture" {
		st := newStacks(cfg.Router.MaxInFlight)
		defer st.close()
		h := wm.AddConsumerHandler("observe", cfg.Router.Topic, backend.Subscriber, r.observe)
		h.AddMiddleware(st.middleware, hm.middleware("observe", backend.Subscriber))
	}

	var wg sync.WaitGroup
	runCtx, stopRouter := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRouter()
	wg.Go(func() {
		if err := wm.Run(runCtx); err != nil {
			errc <- fmt.Errorf("router: %w", err)
		}
	})
	select {
	case <-wm.Running():
	case err := <-errc:
		_ = wm.Close()
		wg.Wait()
		return err
	}
	wg.Go(func() { r.watchDependencies(runCtx) })
	close(r.running)
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
		// Watermill's only Close error is its close timeout: handlers
		// still running then are cut off and their messages, unacked,
		// are redelivered. Nothing is lost, so the shutdown stays clean.
		r.logger.Warn("drain timeout: events still in flight will be redelivered",
			"drain_timeout", cfg.Router.ShutdownTimeout.String(), "err", err)
	}
	stopRouter()
	wg.Wait()
	r.logger.Info("stopped", "took", time.Since(start).Round(time.Millisecond).String())
	return runErr
}

// compile sets up what observe needs from the observers and the
// policy: the matcher, the stacks and the metric children.
func (r *Router) compile() {
	r.matcher = engine.NewMatcher(r.observers)
	r.byName = make(map[string]*engine.Observer, len(r.observers))
	r.stacks = make(map[string]message.HandlerFunc, len(r.observers))
	r.runs = make(map[string]map[string]prometheus.Counter, len(r.observers))
	for _, o := range r.observers {
		r.byName[o.Name] = o
		r.stacks[o.Name] = r.policy.Stack(o)
		r.runs[o.Name] = r.metrics.observerRuns(o.Name)
	}
	r.handled = r.metrics.Events.WithLabelValues("handled")
}

// Backoff between start-up attempts: the first retry comes soon, for a
// service that is just starting; later ones are spaced out up to
// startupMaxBackoff, for one that takes its time.
const (
	startupMinBackoff = 250 * time.Millisecond
	startupMaxBackoff = 5 * time.Second
)

// build builds the backend. While a service the config names does not
// answer (a *topologies.DependencyError), it retries with backoff for up
// to router.startup_timeout, since in a container millrace often starts
// before its database or bus. It logs each failed attempt with the
// reason, which /readyz gives meanwhile. Any other error, or the
// timeout, ends it; so does ctx, with a nil backend and a nil error.
func (r *Router) build(ctx context.Context) (*topologies.Backend, error) {
	timeout := r.cfg.Router.StartupTimeout.D()
	if timeout <= 0 {
		return r.opts.Topologies.Build(ctx, r.cfg, r.logger)
	}
	deadline := time.Now().Add(timeout)
	wait := startupMinBackoff
	var err error
	for attempt := 1; ; attempt++ {
		// An attempt that would start at the deadline could only fail
		// with it, hiding the reason of the one before.
		if attempt > 1 && !time.Now().Before(deadline) {
			return nil, fmt.Errorf("gave up after router.startup_timeout (%s): %w", timeout, err)
		}
		actx, cancel := context.WithDeadline(ctx, deadline)
		b, berr := r.opts.Topologies.Build(actx, r.cfg, r.logger)
		cut := actx.Err() != nil
		cancel()
		if berr != nil && cut && err != nil && ctx.Err() == nil {
			// The deadline cut this attempt short in whatever step it
			// had reached (a capture's migration, say), with an error
			// of that step's: the attempt before says which service
			// did not answer.
			return nil, fmt.Errorf("gave up after router.startup_timeout (%s): %w", timeout, err)
		}
		var dep *topologies.DependencyError
		if berr == nil || !errors.As(berr, &dep) {
			return b, berr
		}
		if !cut || err == nil {
			// An attempt that the deadline cut short fails with "context
			// deadline exceeded": the attempt before says more.
			err = berr
		}
		r.mu.Lock()
		r.waiting = err
		r.mu.Unlock()
		pause := max(0, min(wait, time.Until(deadline)))
		r.logger.Warn("waiting for a service", "attempt", attempt, "retry_in", pause.Round(time.Millisecond).String(),
			"startup_timeout", timeout.String(), "err", err)
		if middleware.Sleep(ctx, pause) != nil {
			r.logger.Info("stopped while waiting for a service", "err", err)
			return nil, nil
		}
		wait = min(2*wait, startupMaxBackoff)
	}
}

// builtBackend returns the backend once Run built it; before, nil and
// why it is not there yet.
func (r *Router) builtBackend() (*topologies.Backend, string) {
	select {
	case <-r.started:
		return r.backend, ""
	default:
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waiting != nil {
		return nil, r.waiting.Error()
	}
	return nil, "starting"
}

// dependencyProbeInterval is how often a running process checks its
// services, and probeTimeout bounds one check.
const (
	dependencyProbeInterval = 2 * time.Second
	probeTimeout            = 2 * time.Second
)

// watchDependencies logs, once each, when a service the process needs
// stops answering and when it answers again: the clients reconnect on
// their own and quietly, and meanwhile the bus redelivers what was not
// acked. /readyz says the same to whoever asks.
func (r *Router) watchDependencies(ctx context.Context) {
	if r.backend.Ready == nil {
		return
	}
	t := time.NewTicker(dependencyProbeInterval)
	defer t.Stop()
	var lost error
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		err := r.backend.Ready(pctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && lost == nil:
			r.logger.Warn("a service does not answer; waiting for it to come back", "err", err)
		case err == nil && lost != nil:
			r.logger.Info("service answers again", "was", lost.Error())
		}
		lost = err
	}
}

// openStores returns the dedup ledger and the result cache that
// dedup.store and cache.store ask for ("" is the topology's own, or
// memory), nil for a disabled one, and a func that closes what it
// opened. Dedup and cache on the same kind share one store, so that one
// event's checks are one round trip.
func (r *Router) openStores(ctx context.Context, b *topologies.Backend, res *resources) (stores.DedupStore, stores.ResultCache, func() error, error) {
	cfg := r.cfg
	if cfg.Role == "capture" {
		return nil, nil, func() error { return nil }, nil // no observers run here
	}
	var closers []func() error
	closeAll := func() error {
		var errs []error
		for i := len(closers) - 1; i >= 0; i-- {
			errs = append(errs, closers[i]())
		}
		closers = nil
		return errors.Join(errs...)
	}
	opened := map[string]stores.Ledger{}
	open := func(kind string) (stores.Ledger, error) {
		if s, ok := opened[kind]; ok {
			return s, nil
		}
		oc := stores.OpenConfig{KeyPrefix: cfg.Redis.KeyPrefix, Logger: r.logger.With("component", "ledger")}
		var err error
		switch kind {
		case "redis":
			if oc.Redis, err = res.Redis(); err != nil {
				return nil, err
			}
		case "postgres":
			if oc.PostgresURL, err = config.Secret(cfg.Postgres.URL, cfg.Postgres.URLEnv); err != nil {
				return nil, fmt.Errorf("postgres.url_env: %w", err)
			}
		}
		s, closeStore, err := stores.Open(ctx, kind, oc)
		if err != nil {
			return nil, err
		}
		closers = append(closers, closeStore)
		opened[kind] = s
		return s, nil
	}
	var dedup stores.DedupStore
	var cache stores.ResultCache
	if cfg.Dedup.Enabled {
		if cfg.Dedup.Store == "" && b.Dedup != nil {
			dedup = b.Dedup
		} else {
			s, err := open(cmp.Or(cfg.Dedup.Store, "memory"))
			if err != nil {
				return nil, nil, nil, errors.Join(fmt.Errorf("dedup.store: %w", err), closeAll())
			}
			dedup = s
		}
	}
	if cfg.Cache.Enabled {
		if cfg.Cache.Store == "" && b.Cache != nil {
			cache = b.Cache
		} else {
			s, err := open(cmp.Or(cfg.Cache.Store, "memory"))
			if err != nil {
				return nil, nil, nil, errors.Join(fmt.Errorf("cache.store: %w", err), closeAll())
			}
			cache = s
		}
	}
	return dedup, cache, closeAll, nil
}

// Publish puts events on the bus topic, each with its id as message UUID
// and its ordering key.
func (r *Router) Publish(ctx context.Context, evs ...*event.Event) error {
	return r.publish(ctx, nil, evs)
}

// publish is Publish with metadata set on every message.
func (r *Router) publish(ctx context.Context, md map[string]string, evs []*event.Event) error {
	msgs := make([]*message.Message, 0, len(evs))
	for _, ev := range evs {
		b, err := event.Encode(ev)
		if err != nil {
			return fmt.Errorf("encode event %s: %w", ev.ID, err)
		}
		m := message.NewMessageWithContext(ctx, ev.ID, b)
		bus.SetRouting(m, ev)
		for k, v := range md {
			m.Metadata.Set(k, v)
		}
		msgs = append(msgs, m)
	}
	return r.backend.Publisher.Publish(r.cfg.Router.Topic, msgs...)
}

// publishRaw serves actions that publish (handlers.Deps.Publish). When
// the payload is an event, the message carries its ordering key and
// subject like any other event, so consumers of topic keep per-entity
// order.
func (r *Router) publishRaw(ctx context.Context, topic, id string, payload []byte) error {
	m := message.NewMessageWithContext(ctx, id, payload)
	if ev, err := event.Decode(payload); err == nil {
		bus.SetRouting(m, ev)
	}
	return r.backend.Publisher.Publish(topic, m)
}

// observe is the bus handler: decode, match, and run each matching
// observer through its delivery stack (middleware.Policy.Stack: failure
// policy, condition, dedup ledger, retries, actions with the result
// cache and circuit breakers).
//
// It returns nil, and the bus acks the message, once every observer
// either succeeded, was skipped (condition, duplicate) or followed its
// failure policy (dead letter written, logged, dropped). It returns an
// error, and the bus redelivers the message, only when that is not so:
// a dead-letter write failed, the same event is still in flight in
// another delivery, a breaker is open, or the process is shutting down.
// The message's retry delay metadata then tells the bus how long to wait.
//
// Retries wait inside the stack: the bus releases the messages of one
// entity one after another and those of different entities in parallel,
// so a wait holds back only the entity whose event it is, which
// per-entity order requires anyway.
func (r *Router) observe(msg *message.Message) error {
	if r.tracer != nil {
		return r.observeTraced(msg)
	}
	return r.observeMessage(msg)
}

// observeTraced is observe inside a consume span: a separate path, so
// that observe without tracing makes no span and no context.
func (r *Router) observeTraced(msg *message.Message) error {
	span := r.tracer.Consume(msg, r.topicOf(msg.Context()))
	err := r.observeMessage(msg)
	tracing.End(span, err)
	return err
}

func (r *Router) observeMessage(msg *message.Message) error {
	ctx := msg.Context()
	ev, err := event.Decode(msg.Payload)
	if err != nil {
		return r.undecodable(ctx, msg, err)
	}
	obs := r.matcher.Match(ev)
	if name := msg.Metadata.Get(bus.ObserverMetadata); name != "" {
		// A replay from the dead-letter store: only the observer that
		// failed runs again.
		o, ok := r.byName[name]
		if !ok {
			r.metrics.Events.WithLabelValues("dropped").Inc()
			r.logger.ErrorContext(ctx, "replayed event names an observer that is not configured; dropped",
				"observer", name, "event_id", ev.ID, "uuid", msg.UUID)
			return nil
		}
		obs = []*engine.Observer{o}
		if op := msg.Metadata.Get(bus.ParkMetadata); op != "" {
			return r.releasePark(msg, ev, o, op)
		}
	}
	sum := r.handle(msg, ev, obs)
	if !ev.Timestamp.IsZero() {
		r.metrics.EventLatency.Observe(time.Since(ev.Timestamp).Seconds())
	}
	if r.logger.Enabled(ctx, slog.LevelDebug) {
		// Checked first: the arguments, the summary above all, would be
		// boxed for every event even with the line off.
		r.logger.DebugContext(ctx, "event handled", "event_id", ev.ID, "event_type", ev.Type, "entity_type", ev.Entity,
			"entity_id", ev.EntityID, "summary", sum)
	}
	if sum.Err != nil {
		r.metrics.Events.WithLabelValues("failed").Inc()
		if sum.RetryDelay > 0 {
			msg.Metadata.Set(bus.RetryDelayMetadata, sum.RetryDelay.String())
		}
		r.logger.WarnContext(ctx, "event not settled; it will be redelivered", "event_id", ev.ID, "err", sum.Err,
			"retry_delay", sum.RetryDelay.String())
		return sum.Err
	}
	r.handled.Inc()
	return nil
}

// undecodable dead-letters a message that is not an event, with its raw
// bytes, and acks it; if the store refuses it, the message is redelivered.
func (r *Router) undecodable(ctx context.Context, msg *message.Message, cause error) error {
	r.metrics.Events.WithLabelValues("undecodable").Inc()
	now := time.Now()
	id, err := r.policy.PutDeadLetter(ctx, stores.DeadLetter{
		Reason: stores.ReasonUndecodable, Error: cause.Error(), Attempts: 1,
		FirstFailure: now, LastFailure: now, Topic: r.topicOf(ctx), Payload: msg.Payload,
	})
	if err != nil {
		msg.Metadata.Set(bus.RetryDelayMetadata, middleware.DeadLetterRetryDelay.String())
		r.logger.ErrorContext(ctx, "undecodable message could not be dead-lettered; it will be redelivered",
			"uuid", msg.UUID, "bytes", len(msg.Payload), "cause", cause, "err", err)
		return fmt.Errorf("dead-letter undecodable message %s: %w", msg.UUID, err)
	}
	r.logger.WarnContext(ctx, "undecodable message dead-lettered", "uuid", msg.UUID, "dead_letter", id,
		"bytes", len(msg.Payload), "err", cause)
	return nil
}

func (r *Router) topicOf(ctx context.Context) string {
	if t := message.SubscribeTopicFromCtx(ctx); t != "" {
		return t
	}
	return r.cfg.Router.Topic
}

// Summary is what happened to one event.
type Summary struct {
	Matched          int `json:"matched"`
	SkippedCondition int `json:"skipped_condition"`
	Succeeded        int `json:"succeeded"`
	// Failed counts observers that failed: dead-lettered, logged,
	// dropped, or left for a redelivery.
	Failed           int `json:"failed"`
	DuplicateSkipped int `json:"duplicate_skipped"`
	DeadLettered     int `json:"dead_lettered"`
	// ActionsRun counts action executions, retries included.
	ActionsRun int `json:"actions_run"`
	// Retries counts action executions after a transient failure.
	Retries int `json:"retries"`
	// CacheHits counts actions skipped because they already succeeded
	// for the event (stored, or earlier in this delivery); CacheMisses
	// counts actions looked up and not found.
	CacheHits   int `json:"cache_hits"`
	CacheMisses int `json:"cache_misses"`
	// Err is set when the message must be redelivered, after RetryDelay.
	Err        error         `json:"-"`
	RetryDelay time.Duration `json:"-"`
}

// LogValue renders the summary as a group in logs.
func (s Summary) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int("matched", s.Matched), slog.Int("skipped_condition", s.SkippedCondition),
		slog.Int("succeeded", s.Succeeded), slog.Int("failed", s.Failed),
		slog.Int("duplicate_skipped", s.DuplicateSkipped), slog.Int("dead_lettered", s.DeadLettered),
		slog.Int("actions_run", s.ActionsRun), slog.Int("retries", s.Retries),
		slog.Int("cache_hits", s.CacheHits), slog.Int("cache_misses", s.CacheMisses))
}

// handle runs the observers of one event through their stacks,
// concurrently when there are several: each has its own retries and
// failure policy, and the event's order per entity holds for each
// observer.
func (r *Router) handle(msg *message.Message, ev *event.Event, obs []*engine.Observer) Summary {
	sum := Summary{Matched: len(obs)}
	topic := r.topicOf(msg.Context())
	if len(obs) == 1 {
		// Most events match one observer: no goroutine, slices or closure.
		d, err := r.deliver(msg, ev, obs[0], topic)
		r.tally(&sum, obs[0], d, err)
		sum.Err = errors.Join(err)
		return sum
	}
	ds := make([]*middleware.Delivery, len(obs))
	errs := make([]error, len(obs))
	var wg sync.WaitGroup
	for i, o := range obs {
		wg.Go(func() { ds[i], errs[i] = r.deliver(msg, ev, o, topic) })
	}
	wg.Wait()
	for i, d := range ds {
		r.tally(&sum, obs[i], d, errs[i])
	}
	sum.Err = errors.Join(errs...)
	return sum
}

// deliver runs observer o's stack on the event.
func (r *Router) deliver(msg *message.Message, ev *event.Event, o *engine.Observer, topic string) (*middleware.Delivery, error) {
	d := &middleware.Delivery{Event: ev, Observer: o, Payload: msg.Payload, Topic: topic,
		Actions: make([]middleware.ActionState, len(o.Actions))}
	if msg.Metadata.Get(bus.ObserverMetadata) == o.Name {
		// A replay: the actions its dead letter recorded as succeeded
		// are not run again, unless it asks for every action.
		if done := msg.Metadata.Get(bus.SucceededMetadata); done != "" {
			d.MarkSucceeded(strings.Split(done, ","))
		}
		d.RunAll = msg.Metadata.Get(bus.AllActionsMetadata) == "true"
	}
	if r.recent == nil {
		return d, middleware.Run(msg, d, r.stacks[o.Name])
	}
	start := time.Now()
	err := middleware.Run(msg, d, r.stacks[o.Name])
	r.recent.record(ev, d, start)
	return d, err
}

// tally counts observer o's delivery d, which ended with err, into sum
// and the metrics.
func (r *Router) tally(sum *Summary, o *engine.Observer, d *middleware.Delivery, err error) {
	if c, ok := r.runs[o.Name][d.Outcome]; ok {
		c.Inc()
	} else {
		r.metrics.Observers.WithLabelValues(o.Name, d.Outcome).Inc()
	}
	switch d.Outcome {
	case middleware.OutcomeSucceeded:
		sum.Succeeded++
	case middleware.OutcomeSkipped:
		sum.SkippedCondition++
	case middleware.OutcomeDuplicate:
		sum.DuplicateSkipped++
	case middleware.OutcomeDeadLettered:
		sum.DeadLettered++
		sum.Failed++
	default:
		sum.Failed++
	}
	sum.ActionsRun += d.ActionsRun()
	sum.Retries += d.Retries
	sum.CacheHits += d.CacheHits
	sum.CacheMisses += d.CacheMisses
	// The event comes back when the first of its observers can make
	// progress: one whose breaker lets a trial through in 300ms must
	// not wait for another's that stays open for 30s (the observers
	// that finished are skipped by the ledger).
	if err != nil && d.RetryDelay > 0 && (sum.RetryDelay == 0 || d.RetryDelay < sum.RetryDelay) {
		sum.RetryDelay = d.RetryDelay
	}
}

// limitConfig turns [delivery] into the endpoints' limits; Validate
// checked the rates.
func limitConfig(d config.Delivery) middleware.LimitConfig {
	lc := middleware.LimitConfig{MaxConcurrency: d.MaxConcurrency, Adaptive: d.Adaptive, ProbeAfter: d.ProbeAfter.D(),
		Endpoints: make(map[string]middleware.EndpointLimit, len(d.Endpoints))}
	for _, e := range d.Endpoints {
		el := middleware.EndpointLimit{MaxConcurrency: e.MaxConcurrency, Burst: e.Burst}
		if e.Rate != "" {
			perSec, _ := config.ParseRate(e.Rate)
			el.Rate = rate.Limit(perSec)
		}
		lc.Endpoints[e.Endpoint] = el
	}
	return lc
}
