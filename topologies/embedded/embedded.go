package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/millrace/millrace/stores"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/millrace/millrace/bus/jetstream"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
)

// Register adds the "embedded" topology to r.
func Register(r *topologies.Registry) error { return r.Register(Topology()) }

// Build starts the server, connects to it in-process, ensures the stream
// and returns the backend.
func Build(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*topologies.Backend, error) {
	b, _, err := start(ctx, cfg, logger)
	return b, err
}

// ServerOptions are the options of the embedded NATS server of cfg: on
// loopback, JetStream with its store in embedded.data_dir, synced to disk
// as embedded.sync says. The error is embedded.sync's when it is invalid.
func ServerOptions(cfg config.Embedded) (*server.Options, error) {
	always, interval, err := config.ParseSync(cfg.Sync)
	if err != nil {
		return nil, config.Errorf("embedded.sync", "%v", err)
	}
	port := cfg.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return &server.Options{
		ServerName: "millrace-embedded",
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		// With SyncAlways the server writes each message through to disk
		// (fsync) before it acknowledges the publish; SyncInterval is
		// then only its background flush of the rest (consumer state),
		// which the server sets to its default when it is 0.
		SyncAlways:   always,
		SyncInterval: interval,
		NoSigs:       true,
		NoLog:        true,
	}, nil
}

// start is Build, which also returns the running server.
func start(ctx context.Context, cfg *config.Config, logger *slog.Logger) (_ *topologies.Backend, _ *server.Server, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts, err := ServerOptions(cfg.Embedded)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(cfg.Embedded.DataDir, 0o750); err != nil {
		return nil, nil, fmt.Errorf("embedded: data dir: %w", err)
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, nil, fmt.Errorf("embedded: nats server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, nil, errors.New("embedded: nats server not ready within 10s")
	}
	// b, not the result, is what the deferred clean-up closes: a return
	// nil, err leaves the result nil.
	b := &topologies.Backend{Closers: []func() error{func() error { ns.Shutdown(); ns.WaitForShutdown(); return nil }}}
	defer func() {
		if err != nil {
			err = errors.Join(err, b.Close())
		}
	}()
	busMetrics := jetstream.NewMetrics()
	nc, err := nats.Connect(ns.ClientURL(), append([]nats.Option{nats.InProcessServer(ns), nats.Name("millrace")},
		jetstream.ConnHandlers(logger, busMetrics)...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("embedded: connect: %w", err)
	}
	b.Closers = append(b.Closers, func() error { return nc.Drain() })
	js, err := njs.New(nc)
	if err != nil {
		return nil, nil, fmt.Errorf("embedded: jetstream: %w", err)
	}
	jc := jetstream.Config{
		Stream: "MILLRACE", SubjectPrefix: "millrace", Consumer: "millrace",
		AckWait: 30 * time.Second, MaxDeliver: -1, MaxAge: cfg.Embedded.MaxAge.D(), Replicas: 1,
		DuplicateWindow: cfg.Dedup.Window.D(), MaxInFlight: cfg.Router.MaxInFlight,
		MaxBuffered:  cfg.Router.MaxBuffered,
		DrainTimeout: cfg.Router.ShutdownTimeout.D(),
	}
	if _, err := jetstream.EnsureStream(ctx, js, jc); err != nil {
		return nil, nil, err
	}
	// Dead letters get a stream of their own, beside the events' and in
	// the same data dir: its subjects must not fall under "millrace.>".
	dlq, err := stores.NewJetStreamDeadLetters(ctx, js, stores.JetStreamDeadLettersConfig{
		Stream: "MILLRACE_DLQ", Subject: "millrace_dlq", MaxEntries: cfg.DLQ.MaxEntries})
	if err != nil {
		return nil, nil, fmt.Errorf("embedded: %w", err)
	}
	b.DeadLetters = dlq
	// One process, so the ledger and the cache live in its memory.
	ledger, closeLedger, err := stores.Open(ctx, "memory", stores.OpenConfig{})
	if err != nil {
		return nil, nil, fmt.Errorf("embedded: %w", err)
	}
	b.Closers = append(b.Closers, closeLedger)
	b.Dedup, b.Cache = ledger, ledger
	if cfg.Bus.Driver == config.DriverWatermill {
		subConn, err := nats.Connect(ns.ClientURL(), append([]nats.Option{nats.InProcessServer(ns), nats.Name("millrace subscriber")},
			jetstream.ConnHandlers(logger, busMetrics)...)...)
		if err != nil {
			return nil, nil, fmt.Errorf("embedded: connect: %w", err)
		}
		if err := topologies.UpstreamNATS(b, nc, subConn, jc, logger); err != nil {
			return nil, nil, fmt.Errorf("embedded: %w", err)
		}
	} else {
		b.Publisher = jetstream.NewPublisher(js, jc)
		b.Subscriber = jetstream.NewSubscriber(js, jc, busMetrics, logger.With("component", "bus"))
	}
	// The bus is inside this process, so recording goes through it (GET
	// /v1/record): an ordered consumer, ephemeral and without acks,
	// beside the router's durable one.
	b.Record = func(ctx context.Context, span topologies.RecordSpan, fn func([]byte) error) error {
		return jetstream.Export(ctx, js, jc, cfg.Router.Topic, span.FromSeq, span.Since, span.Until, span.Limit,
			func(_ uint64, p []byte) error { return fn(p) })
	}
	b.Collectors = append(b.Collectors, busMetrics.Collectors()...)
	b.Lag = topologies.JetStreamLag(js, jc.Stream)
	b.Ready = func(context.Context) error {
		if !nc.IsConnected() {
			return errors.New("not connected to the embedded NATS server")
		}
		return nil
	}
	// [[sources]]: the process captures their changes (triggers or the
	// write-ahead log) into its own stream, as the nats topology's bridge
	// does into a server's.
	if cfg.Role != "observe" && len(cfg.Sources) > 0 {
		srcs, err := topologies.OpenSources(ctx, cfg, logger)
		if err != nil {
			return nil, nil, err
		}
		b.Closers = append(b.Closers, srcs.Close)
		b.Captures = srcs.Captures(topologies.BridgeGroup)
		for _, c := range b.Captures {
			b.Closers = append(b.Closers, c.Close)
		}
		b.Collectors = append(b.Collectors, srcs.WALMetrics.Collectors()...)
		busReady := b.Ready
		b.Ready = func(ctx context.Context) error { return errors.Join(busReady(ctx), srcs.Ready(ctx)) }
	}
	logger.Info("embedded NATS JetStream started", "driver", cfg.Bus.Driver, "url", ns.ClientURL(), "data_dir", cfg.Embedded.DataDir,
		"sync", syncSetting(ns.JetStreamConfig()), "sources", len(b.Captures))
	return b, ns, nil
}

// syncSetting says when the running server forces its writes to disk:
// "always", or the interval of its background fsync.
func syncSetting(jsc *server.JetStreamConfig) string {
	switch {
	case jsc == nil:
		return "unknown"
	case jsc.SyncAlways:
		return config.SyncAlways
	}
	return jsc.SyncInterval.String()
}
