package topologies

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/bus/capture"
	"github.com/millrace/millrace/bus/wal"
	"github.com/millrace/millrace/config"
)

// BridgeGroup is the consumer group of the change logs read by the
// capture handlers of the nats, multidb and redis topologies: one reader
// per source across every process, forwarding to the bus.
const BridgeGroup = "bridge"

// Source is one [[sources]] database, connected.
type Source struct {
	// Name is the source's name (config sources[i].name).
	Name string
	// Pool is a connection pool to the database.
	Pool *pgxpool.Pool
	// Capture is the capture reader's config for this source.
	Capture capture.Config
	// WAL is the WAL capture's config when the source's capture is
	// "wal" (nil for the trigger capture).
	WAL *wal.Config
	// Key and URL are where the connection URL came from and the URL,
	// for the errors that name the database.
	Key, URL string
}

// Sources are the connected [[sources]] of a config. The nats, multidb
// and redis topologies use them to capture changes onto their bus; the
// postgres topology reads their change logs as its bus.
type Sources struct {
	List   []*Source
	logger *slog.Logger
	// WALMetrics are the WAL captures' gauges; register Collectors().
	WALMetrics *wal.Metrics
}

// OpenSources connects to each [[sources]] database and, for a source with
// install = true, creates its capture schema and installs its triggers.
// On error it closes what it opened.
func OpenSources(ctx context.Context, cfg *config.Config, logger *slog.Logger) (_ *Sources, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ss := &Sources{logger: logger, WALMetrics: wal.NewMetrics()}
	defer func() {
		if err != nil {
			ss.Close()
		}
	}()
	for i, s := range cfg.Sources {
		src, err := openSource(ctx, cfg, i, s, logger)
		if err != nil {
			return nil, err
		}
		ss.List = append(ss.List, src)
	}
	return ss, nil
}

// openSource connects to cfg.Sources[i]. A database that does not answer
// is a *DependencyError naming the key of its URL.
func openSource(ctx context.Context, cfg *config.Config, i int, s config.Source, logger *slog.Logger) (*Source, error) {
	path := config.Index("sources", i)
	key := config.URLKey(path, "postgres_url", s.PostgresURLEnv)
	url, err := config.Secret(s.PostgresURL, s.PostgresURLEnv)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, Unreachable("postgres", "connect", key, url, err)
	}
	if s.Install {
		if err := Install(ctx, pool, s); err != nil {
			pool.Close()
			return nil, fmt.Errorf("%s (%s): %w", path, s.Name, err)
		}
		logger.Info("capture installed", "source", s.Name, "capture", s.Capture, "schema", s.Schema, "tables", s.Tables)
	}
	src := &Source{Name: s.Name, Pool: pool, Capture: CaptureConfig(cfg, s), Key: key, URL: url}
	if s.Capture == config.CaptureWAL {
		// Refuse to start half-way: a server, role, slot or publication
		// that cannot serve the capture is an error now, naming the fix.
		if err := wal.Check(ctx, pool, s.SlotName(), s.PublicationName()); err != nil {
			pool.Close()
			return nil, fmt.Errorf("%s (%s): %w", path, s.Name, err)
		}
		wc := WALConfig(cfg, s)
		src.WAL = &wc
	}
	return src, nil
}

// Ready pings every source's database; the error names each one that
// does not answer.
func (ss *Sources) Ready(ctx context.Context) error {
	var errs []error
	for _, s := range ss.List {
		if err := s.Pool.Ping(ctx); err != nil {
			errs = append(errs, Unreachable("postgres", "ping", s.Key, s.URL, err))
		}
	}
	return errors.Join(errs...)
}

// Install creates the capture schema of s and watches its tables, as
// `millrace watch` does: with capture = "wal", the publication and the
// slot instead of the triggers.
func Install(ctx context.Context, pool *pgxpool.Pool, s config.Source) error {
	if s.Capture == config.CaptureWAL {
		return SetupWAL(ctx, pool, s, s.Tables)
	}
	if err := capture.Migrate(ctx, pool, s.Schema); err != nil {
		return err
	}
	if s.Mode == capture.ModeFraiseQL {
		return nil // the change log is FraiseQL's; there is nothing to watch
	}
	if len(s.Tables) > 0 {
		if err := capture.Watch(ctx, pool, s.Schema, s.Tables, s.Entities); err != nil {
			return err
		}
	}
	return capture.SetNotify(ctx, pool, s.Schema, s.Notify)
}

// CaptureConfig is the capture reader's config of source s.
func CaptureConfig(cfg *config.Config, s config.Source) capture.Config {
	return capture.Config{
		Source:       s.Name,
		Schema:       s.Schema,
		Tables:       s.Tables,
		Entities:     s.Entities,
		PollInterval: s.PollInterval.D(),
		BatchSize:    s.BatchSize,
		Notify:       s.Notify,
		Mode:         s.Mode,
		MaxInFlight:  cfg.Router.MaxInFlight,
		MaxBuffered:  cfg.Router.MaxBuffered,
		DrainTimeout: cfg.Router.ShutdownTimeout.D(),
	}
}

// SetupWAL prepares WAL capture of tables for source s: after the
// server's check, the capture schema, which holds the backfill cursors
// (its change log stays empty), then wal.Setup.
func SetupWAL(ctx context.Context, pool *pgxpool.Pool, s config.Source, tables []string) error {
	if err := wal.CheckServer(ctx, pool); err != nil {
		return err
	}
	if err := capture.Migrate(ctx, pool, s.Schema); err != nil {
		return err
	}
	return wal.Setup(ctx, pool, WALSetup(s, tables))
}

// WALSetup is what wal.Setup creates for source s and tables.
func WALSetup(s config.Source, tables []string) wal.SetupConfig {
	return wal.SetupConfig{Slot: s.SlotName(), Publication: s.PublicationName(), Tables: tables,
		ReplicaIdentityFull: s.ReplicaIdentity != "keep"}
}

// WALConfig is the WAL capture's config of source s.
func WALConfig(cfg *config.Config, s config.Source) wal.Config {
	maxWAL, _ := config.ParseSize(s.MaxRetainedWAL) // validated
	return wal.Config{
		Source:         s.Name,
		Slot:           s.SlotName(),
		Publication:    s.PublicationName(),
		Entities:       s.Entities,
		MaxInFlight:    cfg.Router.MaxInFlight,
		MaxRetainedWAL: maxWAL,
		DrainTimeout:   cfg.Router.ShutdownTimeout.D(),
	}
}

// Captures returns, by source name, a reader of each source's change log
// for group, as Backend.Captures wants them: their Subscribe
// reads group whatever the topic it is given.
func (ss *Sources) Captures(group string) map[string]message.Subscriber {
	out := make(map[string]message.Subscriber, len(ss.List))
	for _, s := range ss.List {
		if s.WAL != nil {
			// The slot is the consumer: group does not apply.
			out[s.Name] = wal.NewSubscriber(s.Pool, *s.WAL, ss.WALMetrics, ss.logger.With("component", "capture"))
			continue
		}
		sub := capture.NewSubscriber(s.Pool, s.Capture, ss.logger.With("component", "capture"))
		out[s.Name] = &GroupSubscriber{Subscriber: sub, Group: group}
	}
	return out
}

// Close closes every pool. Close the readers first.
func (ss *Sources) Close() error {
	for _, s := range ss.List {
		s.Pool.Close()
	}
	ss.List = nil
	return nil
}

// GroupSubscriber reads a change log for one consumer group, whatever
// the topic: the router subscribes with the bus topic, while a capture
// subscriber takes the group as its topic.
type GroupSubscriber struct {
	*capture.Subscriber
	Group string
}

var _ message.Subscriber = (*GroupSubscriber)(nil)

// Subscribe reads the change log for g.Group; topic is not used.
func (g *GroupSubscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	return g.Subscriber.Subscribe(ctx, g.Group)
}
