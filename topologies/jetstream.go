package topologies

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"sync"
	"time"

	natsgo "github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/millrace/millrace/bus/jetstream"
	"github.com/millrace/millrace/bus/watermill"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/stores"
)

// JetStreamFeatures are those of a topology on a JetStream bus (nats,
// multidb): subjects for every topic, partitions (nats.partitions), dead
// letters in a stream.
func JetStreamFeatures() config.Features {
	return config.Features{Topics: true, Partitions: true, DurableDeadLetters: true}
}

// JetStreamNotes are the notes of a topology on an external NATS server
// (nats, multidb): with nats.replicas = 1, whether an acknowledged event
// survives a crash of the server's host depends on the server's
// sync_interval, which a client connection cannot read (only the system
// account's monitoring requests report it).
func JetStreamNotes(cfg *config.Config) []string {
	if cfg.NATS.Replicas > 1 {
		return nil
	}
	return []string{fmt.Sprintf("nats.replicas: %d: millrace's streams live on one NATS server, which syncs JetStream writes to disk every sync_interval, "+
		"2 minutes by NATS's default: a crash of its host (not only of the server) then loses the events acknowledged in the last 2 minutes. "+
		"millrace cannot read the setting: set sync_interval: always in the server's config (the deployment files do), or run a cluster with nats.replicas = 3 "+
		"(docs/deployment/03-nats-distributed.md, \"The NATS server's sync setting\")", cfg.NATS.Replicas)}
}

// connectTimeout bounds the first connection to NATS.
const connectTimeout = 10 * time.Second

// A server that stops answering without closing the connection (frozen,
// or cut off by a network partition) is left after pingInterval ×
// (maxPingsOut + 1) at most, for another server of the cluster: with
// nats.go's defaults (2 minutes, 2) a worker connected to it would wait
// up to 6 minutes.
const (
	pingInterval = 5 * time.Second
	maxPingsOut  = 2
)

// setupTimeout bounds each JetStream request of the start (the streams):
// one sent to a server that stopped answering fails in time for the
// start to try again on a fresh connection, to another server.
const setupTimeout = 15 * time.Second

// BuildJetStream builds a backend on a NATS JetStream bus, for the nats
// and multidb topologies: it connects to NATS ([nats]), ensures the
// stream, opens the stores (dead letters in a stream of their own, the
// dedup ledger and result cache in Redis when [redis] is set) and, when
// the process captures (role all or capture), the [[sources]].
func BuildJetStream(ctx context.Context, cfg *config.Config, logger *slog.Logger) (_ *Backend, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// b, not the result, is what the deferred clean-up closes: a return
	// nil, err leaves the result nil.
	b := &Backend{}
	defer func() {
		if err != nil {
			err = errors.Join(err, b.Close())
		}
	}()
	// The sources are opened first: a source that cannot be captured
	// (wal_level, privileges, a missing slot) refuses the start before
	// anything is provisioned on NATS.
	var srcs *Sources
	if cfg.Role != "observe" && len(cfg.Sources) > 0 {
		if srcs, err = OpenSources(ctx, cfg, logger); err != nil {
			return nil, err
		}
		b.Closers = append(b.Closers, srcs.Close)
	}
	// The dedup ledger and the result cache: shared by every worker in
	// Redis; without Redis, each process remembers what it handled, and
	// a redelivery to another worker is not recognised as a duplicate.
	// Redis is reached before the streams are set up: a PING answers at
	// once, and a Redis that does not is named as the reason even when
	// the stream requests after it would have taken the rest of the
	// start's time.
	rc, _, err := ConnectRedis(ctx, cfg.Redis)
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

	busMetrics := jetstream.NewMetrics()
	nc, err := connectNATS(cfg, logger, busMetrics)
	if err != nil {
		return nil, err
	}
	b.Closers = append(b.Closers, func() error { nc.Close(); return nil })
	js, err := njs.New(nc)
	if err != nil {
		return nil, fmt.Errorf("nats: jetstream: %w", err)
	}
	jc := JetStreamConfig(cfg)
	sctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	if _, err := jetstream.EnsureStream(sctx, js, jc); err != nil {
		// Operators may provision the stream themselves and not let
		// millrace change it: an existing stream is used as it is.
		s, serr := js.Stream(sctx, jc.Stream)
		if serr != nil {
			if jetstream.Unavailable(err) {
				// No answer (a cluster electing a leader): wait for it.
				return nil, Unreachable("nats", "ensure stream", "nats.url", cfg.NATS.URL, err)
			}
			return nil, err
		}
		logger.Warn("nats: cannot create or update the stream; using it as it is", "stream", jc.Stream, "err", err,
			"subjects", s.CachedInfo().Config.Subjects)
	}
	// Dead letters get a stream of their own; "<prefix>_dlq" is outside
	// the event stream's "<prefix>.>".
	dctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	dlq, err := stores.NewJetStreamDeadLetters(dctx, js, stores.JetStreamDeadLettersConfig{
		Stream: cfg.NATS.Stream + "_DLQ", Subject: cfg.NATS.SubjectPrefix + "_dlq",
		MaxEntries: cfg.DLQ.MaxEntries, Replicas: cfg.NATS.Replicas,
	})
	if jetstream.Unavailable(err) {
		return nil, Unreachable("nats", "dead-letter stream", "nats.url", cfg.NATS.URL, err)
	} else if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	b.DeadLetters = dlq
	if cfg.Bus.Driver == config.DriverWatermill {
		subConn, err := connectNATS(cfg, logger, busMetrics)
		if err != nil {
			return nil, err
		}
		if err := UpstreamNATS(b, nc, subConn, jc, logger); err != nil {
			return nil, err
		}
	} else {
		b.Publisher = jetstream.NewPublisher(js, jc)
		b.Subscriber = jetstream.NewSubscriber(js, jc, busMetrics, logger.With("component", "bus"))
	}
	b.Collectors = append(b.Collectors, busMetrics.Collectors()...)
	b.Lag = JetStreamLag(js, jc.Stream)
	// Redis holds only the stores here, which fail open: while it is
	// down events still flow, so it does not make the process unready.
	b.Ready = func(context.Context) error {
		if !nc.IsConnected() {
			return Unreachable("nats", "ping", "nats.url", cfg.NATS.URL,
				cmp.Or(nc.LastError(), errors.New("not connected")))
		}
		return nil
	}
	if srcs != nil {
		b.Captures = srcs.Captures(BridgeGroup)
		b.Collectors = append(b.Collectors, srcs.WALMetrics.Collectors()...)
		for _, c := range b.Captures {
			b.Closers = append(b.Closers, c.Close)
		}
		// The process captures: a source it cannot read is a dependency
		// lost as much as the bus.
		busReady := b.Ready
		b.Ready = func(ctx context.Context) error { return errors.Join(busReady(ctx), srcs.Ready(ctx)) }
	}
	logger.Info("nats topology: JetStream bus", "driver", cfg.Bus.Driver, "url", nc.ConnectedUrlRedacted(), "stream", jc.Stream,
		"subjects", jc.StreamSubjects(), "consumer", jc.Consumer, "partitions", jc.Partitions, "sources", len(b.Captures))
	return b, nil
}

// UpstreamNATS sets b's bus to watermill-nats/v2's JetStream Pub/Sub
// (bus.driver = "watermill", package bus/watermill) on the stream of
// jc: the publisher on nc, the subscriber on subConn, which it owns and
// b closes (the upstream subscriber drains it).
func UpstreamNATS(b *Backend, nc, subConn *natsgo.Conn, jc jetstream.Config, logger *slog.Logger) error {
	pub, sub, err := watermill.NewNATS(nc, subConn, jc, logger.With("component", "bus"))
	if err != nil {
		subConn.Close()
		return err
	}
	b.Publisher, b.Subscriber = pub, sub
	// The router closes the subscriber when it ran; a backend closed
	// without running closes it here (Close is idempotent).
	b.Closers = append(b.Closers, func() error { subConn.Close(); return nil }, sub.Close)
	return nil
}

// connectNATS connects to nats.url for the bus, reconnecting forever
// once connected; the connection's asynchronous errors, disconnections
// and reconnections go to logger and m (jetstream.ConnHandlers). A
// failed first connection is a *DependencyError.
func connectNATS(cfg *config.Config, logger *slog.Logger, m *jetstream.Metrics) (*natsgo.Conn, error) {
	d := &dialer{Dialer: net.Dialer{Timeout: connectTimeout}}
	opts := append([]natsgo.Option{
		natsgo.Name("millrace " + cfg.Role),
		natsgo.Timeout(connectTimeout),
		natsgo.SetCustomDialer(d),
		natsgo.MaxReconnects(-1),
		natsgo.PingInterval(pingInterval),
		natsgo.MaxPingsOutstanding(maxPingsOut),
	}, jetstream.ConnHandlers(logger, m)...)
	nc, err := natsgo.Connect(cfg.NATS.URL, opts...)
	if err != nil {
		if derr := d.lastErr(); derr != nil && errors.Is(err, natsgo.ErrNoServers) {
			err = derr
		}
		return nil, Unreachable("nats", "connect", "nats.url", cfg.NATS.URL, err)
	}
	return nc, nil
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

// JetStreamConfig is the JetStream bus's config of cfg: the nats section, the
// dedup window as the stream's duplicate window, and the router's limits.
func JetStreamConfig(cfg *config.Config) jetstream.Config {
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
		MaxBuffered:     cfg.Router.MaxBuffered,
		DrainTimeout:    cfg.Router.ShutdownTimeout.D(),
		Partitions:      cfg.NATS.Partitions,
		PartitionTTL:    cfg.NATS.PartitionTTL.D(),
	}
}

var (
	// streamRE matches JetStream stream and durable consumer names.
	streamRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	// subjectRE matches a literal subject: tokens without wildcards.
	subjectRE = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
)

// ValidateNATS checks the [nats] section, for the topologies on a
// JetStream bus.
func ValidateNATS(cfg *config.Config) error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, config.Errorf(path, format, args...)) }
	n := cfg.NATS
	if n.URL == "" {
		add("nats.url", "must not be empty")
	}
	if !streamRE.MatchString(n.Stream) {
		add("nats.stream", "%q must hold only letters, digits, '_' and '-'", n.Stream)
	}
	if !subjectRE.MatchString(n.SubjectPrefix) {
		add("nats.subject_prefix", "%q must be dot-separated tokens of letters, digits, '_' and '-'", n.SubjectPrefix)
	}
	if !streamRE.MatchString(n.Consumer) {
		add("nats.consumer", "%q must hold only letters, digits, '_' and '-'", n.Consumer)
	}
	errs = append(errs, config.CheckPositive("nats.ack_wait", n.AckWait))
	if n.MaxDeliver != -1 && n.MaxDeliver < 1 {
		add("nats.max_deliver", "must be -1 (unlimited) or at least 1, got %d", n.MaxDeliver)
	}
	if n.MaxAge < 0 {
		add("nats.max_age", "must not be negative (0 keeps events forever)")
	}
	if n.Replicas < 1 || n.Replicas > 5 {
		add("nats.replicas", "must be between 1 and 5, got %d", n.Replicas)
	}
	errs = append(errs, CheckPartitions("nats", n.Partitions, n.PartitionTTL))
	return errors.Join(errs...)
}
