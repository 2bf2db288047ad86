package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/millrace/millrace/stores"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/bus/capture"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
)

// ingestSource names the change log of postgres.url when the config has
// no [[sources]]: events then come only from HTTP ingest and publish.
const ingestSource = "postgres"

// Register adds the "postgres" topology to r.
func Register(r *topologies.Registry) error { return r.Register(Topology()) }

// Build connects to the sources (or to postgres.url when there is none),
// installs what they ask for, opens the stores in postgres.url's database
// (default: the first source's) and returns the backend: the change logs
// are the bus, read by postgres.group.
func Build(ctx context.Context, cfg *config.Config, logger *slog.Logger) (_ *topologies.Backend, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	storesURL, err := config.Secret(cfg.Postgres.URL, cfg.Postgres.URLEnv)
	if err != nil {
		return nil, fmt.Errorf("postgres.url_env: %w", err)
	}
	storesKey := config.URLKey("postgres", "url", cfg.Postgres.URLEnv)
	srcCfg := cfg
	if len(cfg.Sources) == 0 {
		if storesURL == "" {
			return nil, errors.New("set [[sources]] or postgres.url")
		}
		// The change log of postgres.url carries ingested events.
		c := *cfg
		var s config.Source
		s.SetDefaults()
		s.Name, s.PostgresURL, s.Schema, s.Install = ingestSource, storesURL, cfg.Postgres.Schema, true
		c.Sources = []config.Source{s}
		srcCfg = &c
	}

	// b, not the result, is what the deferred clean-up closes: a return
	// nil, err leaves the result nil.
	b := &topologies.Backend{}
	defer func() {
		if err != nil {
			err = errors.Join(err, b.Close())
		}
	}()
	srcs, err := topologies.OpenSources(ctx, srcCfg, logger)
	var dep *topologies.DependencyError
	if len(cfg.Sources) == 0 && errors.As(err, &dep) {
		dep.Key = storesKey // the user wrote postgres.url, not a source
	}
	if err != nil {
		return nil, err
	}
	b.Closers = append(b.Closers, srcs.Close)
	if len(cfg.Sources) == 0 {
		srcs.List[0].Key = storesKey
	}
	first := srcs.List[0]
	if storesURL == "" {
		storesURL, storesKey = first.URL, first.Key
	}
	if err := openStores(ctx, b, cfg, storesURL, storesKey, logger); err != nil {
		return nil, err
	}

	subs := make([]*capture.Subscriber, 0, len(srcs.List))
	for _, s := range srcs.List {
		subs = append(subs, capture.NewSubscriber(s.Pool, s.Capture, logger.With("component", "bus", "source", s.Name)))
	}
	merged := newMerged(subs, cfg.Postgres.Group)
	b.Subscriber = merged
	b.Closers = append(b.Closers, merged.Close)
	// HTTP ingest and the publish action append to the first change log.
	b.Publisher = capture.NewPublisher(first.Pool, first.Capture.Schema)
	b.Ready = srcs.Ready
	names := make([]string, 0, len(srcs.List))
	for _, s := range srcs.List {
		names = append(names, s.Name)
	}
	logger.Info("postgres topology: the change logs are the bus", "sources", names, "group", cfg.Postgres.Group)
	return b, nil
}

// openStores opens the dedup ledger, the result cache and the dead
// letters in the database at url (from config key key), each with its
// tables created.
func openStores(ctx context.Context, b *topologies.Backend, cfg *config.Config, url, key string, logger *slog.Logger) error {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return fmt.Errorf("stores: %s: %w", key, err)
	}
	b.Closers = append(b.Closers, func() error { pool.Close(); return nil })
	if err := pool.Ping(ctx); err != nil {
		return topologies.Unreachable("postgres", "connect", key, url, err)
	}
	dlq, err := stores.NewPostgresDeadLetters(pool, stores.PostgresDeadLettersConfig{MaxEntries: cfg.DLQ.MaxEntries})
	if err != nil {
		return err
	}
	if err := dlq.Migrate(ctx); err != nil {
		return err
	}
	b.DeadLetters = dlq

	ledger, closeLedger, err := stores.Open(ctx, "postgres", stores.OpenConfig{PostgresURL: url, Logger: logger.With("component", "ledger")})
	if err != nil {
		return fmt.Errorf("stores: %s: %w", key, err)
	}
	b.Closers = append(b.Closers, closeLedger)
	b.Dedup, b.Cache = ledger, ledger
	return nil
}
