package nats

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/millrace/millrace/stores"

	natsgo "github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/millrace/millrace/bus/jetstream"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
)

// connectTimeout bounds the first connection to NATS.
const connectTimeout = 10 * time.Second

// Register adds the "nats" topology to r.
func Register(r *topologies.Registry) error { return r.Register(Topology()) }

// Build connects to NATS, ensures the stream, opens the stores and, when
// the process captures (role all or capture), the [[sources]].
func Build(ctx context.Context, cfg *config.Config, logger *slog.Logger) (_ *topologies.Backend, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// b, not the result, is what the deferred clean-up closes: a return
	// nil, err leaves the result nil.
	b := &topologies.Backend{}
	defer func() {
		if err != nil {
			err = errors.Join(err, b.Close())
		}
	}()
	d := &dialer{Dialer: net.Dialer{Timeout: connectTimeout}}
	nc, err := natsgo.Connect(cfg.NATS.URL,
		natsgo.Name("millrace "+cfg.Role),
		natsgo.Timeout(connectTimeout),
		natsgo.SetCustomDialer(d),
		natsgo.MaxReconnects(-1),
		natsgo.DisconnectErrHandler(func(_ *natsgo.Conn, err error) {
			if err != nil {
				logger.Warn("nats: disconnected; reconnecting", "err", err)
			}
		}),
		natsgo.ReconnectHandler(func(*natsgo.Conn) { logger.Info("nats: reconnected") }),
	)
	if err != nil {
		if derr := d.lastErr(); derr != nil && errors.Is(err, natsgo.ErrNoServers) {
			err = derr
		}
		return nil, topologies.Unreachable("nats", "connect", "nats.url", cfg.NATS.URL, err)
	}
	b.Closers = append(b.Closers, func() error { nc.Close(); return nil })
	js, err := njs.New(nc)
	if err != nil {
		return nil, fmt.Errorf("nats: jetstream: %w", err)
	}
	jc := BusConfig(cfg)
	if _, err := jetstream.EnsureStream(ctx, js, jc); err != nil {
		// Operators may provision the stream themselves and not let
		// millrace change it: an existing stream is used as it is.
		s, serr := js.Stream(ctx, jc.Stream)
		if serr != nil {
			return nil, err
		}
		logger.Warn("nats: cannot create or update the stream; using it as it is", "stream", jc.Stream, "err", err,
			"subjects", s.CachedInfo().Config.Subjects)
	}
	// Dead letters get a stream of their own; "<prefix>_dlq" is outside
	// the event stream's "<prefix>.>".
	dlq, err := stores.NewJetStreamDeadLetters(ctx, js, stores.JetStreamDeadLettersConfig{
		Stream: cfg.NATS.Stream + "_DLQ", Subject: cfg.NATS.SubjectPrefix + "_dlq",
		MaxEntries: cfg.DLQ.MaxEntries, Replicas: cfg.NATS.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	b.DeadLetters = dlq
	// The dedup ledger and the result cache: shared by every worker in
	// Redis; without Redis, each process remembers what it handled, and
	// a redelivery to another worker is not recognised as a duplicate.
	rc, _, err := topologies.ConnectRedis(ctx, cfg.Redis)
	switch {
	case err != nil:
		return nil, err
	case rc != nil:
		b.Closers = append(b.Closers, rc.Close)
		store, closeStore, err := stores.Open(ctx, "redis", stores.OpenConfig{Redis: rc, KeyPrefix: cfg.Redis.KeyPrefix})
		if err != nil {
			return nil, err
		}
		b.Closers = append(b.Closers, closeStore)
		b.Dedup, b.Cache = store, store
	case cfg.Role != "capture":
		logger.Warn("nats: redis.url is not set: dedup and the result cache are per process")
	}

	b.Publisher = jetstream.NewPublisher(js, jc)
	b.Subscriber = jetstream.NewSubscriber(js, jc, logger.With("component", "bus"))
	// Redis holds only the stores here, which fail open: while it is
	// down events still flow, so it does not make the process unready.
	b.Ready = func(context.Context) error {
		if !nc.IsConnected() {
			return topologies.Unreachable("nats", "ping", "nats.url", cfg.NATS.URL,
				cmp.Or(nc.LastError(), errors.New("not connected")))
		}
		return nil
	}
	if cfg.Role != "observe" && len(cfg.Sources) > 0 {
		srcs, err := topologies.OpenSources(ctx, cfg, logger)
		if err != nil {
			return nil, err
		}
		b.Closers = append(b.Closers, srcs.Close)
		b.Captures = srcs.Captures(topologies.BridgeGroup)
		b.Collectors = append(b.Collectors, srcs.WALMetrics.Collectors()...)
		for _, c := range b.Captures {
			b.Closers = append(b.Closers, c.Close)
		}
		// The process captures: a source it cannot read is a dependency
		// lost as much as the bus.
		busReady := b.Ready
		b.Ready = func(ctx context.Context) error { return errors.Join(busReady(ctx), srcs.Ready(ctx)) }
	}
	logger.Info("nats topology: JetStream bus", "url", nc.ConnectedUrlRedacted(), "stream", jc.Stream,
		"subjects", jc.SubjectPrefix+".>", "consumer", jc.Consumer, "partitions", jc.Partitions, "sources", len(b.Captures))
	return b, nil
}

// dialer remembers the last error of a dial: nats.go reports a refused
// connection as "no servers available for connection", which does not
// tell the user why.
type dialer struct {
	net.Dialer
	mu  sync.Mutex
	err error
}

func (d *dialer) Dial(network, address string) (net.Conn, error) {
	c, err := d.Dialer.Dial(network, address)
	d.mu.Lock()
	d.err = err
	d.mu.Unlock()
	return c, err
}

func (d *dialer) lastErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// BusConfig is the JetStream bus's config of cfg: the nats section, the
// dedup window as the stream's duplicate window, and the router's limits.
func BusConfig(cfg *config.Config) jetstream.Config {
	return jetstream.Config{
		Stream:          cfg.NATS.Stream,
		SubjectPrefix:   cfg.NATS.SubjectPrefix,
		Consumer:        cfg.NATS.Consumer,
		AckWait:         cfg.NATS.AckWait.D(),
		MaxDeliver:      cfg.NATS.MaxDeliver,
		MaxAge:          cfg.NATS.MaxAge.D(),
		Replicas:        cfg.NATS.Replicas,
		DuplicateWindow: cfg.Dedup.Window.D(),
		MaxInFlight:     cfg.Router.MaxInFlight,
		DrainTimeout:    cfg.Router.ShutdownTimeout.D(),
		Partitions:      cfg.NATS.Partitions,
		PartitionTTL:    cfg.NATS.PartitionTTL.D(),
	}
}
