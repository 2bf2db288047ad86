package sqlbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/embedded"
)

// Name is the value of the topology key that picks this topology.
const Name = "sql"

// Topology returns the registry entry: the embedded topology with the
// bus of Bus.
func Topology() topologies.Topology {
	t := topologies.WithBus(Name, embedded.Topology(), Bus)
	base := t.Validate
	t.Validate = func(cfg *config.Config) error { return errors.Join(base(cfg), Validate(cfg)) }
	return t
}

// Validate checks the [postgres] keys the bus reads.
func Validate(cfg *config.Config) error {
	var errs []error
	p := cfg.Postgres
	if (p.URL == "") == (p.URLEnv == "") {
		errs = append(errs, config.Errorf("postgres", "the %s topology needs exactly one of url and url_env", Name))
	}
	errs = append(errs, config.CheckName("postgres.schema", p.Schema), config.CheckName("postgres.group", p.Group))
	return errors.Join(errs...)
}

// Bus opens a pool on postgres.url and returns watermill-sql's publisher
// and subscriber on it, their tables in postgres.schema (created when
// missing).
func Bus(ctx context.Context, cfg *config.Config, logger *slog.Logger) (message.Publisher, message.Subscriber, []func() error, error) {
	url := cfg.Postgres.URL
	if cfg.Postgres.URLEnv != "" {
		url = os.Getenv(cfg.Postgres.URLEnv)
	}
	pool, err := pgxpool.New(ctx, url)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		return nil, nil, nil, topologies.Unreachable("postgres", "connect", "postgres.url", url, err)
	}
	closePool := func() error { pool.Close(); return nil }
	schema := pgx.Identifier{cfg.Postgres.Schema}.Sanitize()
	if _, err := pool.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+schema); err != nil {
		pool.Close()
		return nil, nil, nil, fmt.Errorf("create schema %s: %w", schema, err)
	}
	db := wmsql.BeginnerFromPgx(pool)
	wl := watermill.NewSlogLogger(logger.With("component", "bus"))
	schemaAdapter := wmsql.DefaultPostgreSQLSchema{
		GenerateMessagesTableName: func(topic string) string {
			return schema + "." + pgx.Identifier{"watermill_" + topic}.Sanitize()
		},
		// Any payload, not only JSON: a message that is not an event
		// must still reach the router, which dead-letters it.
		GeneratePayloadType: func(string) string { return "BYTEA" },
	}
	pub, err := wmsql.NewPublisher(db, wmsql.PublisherConfig{SchemaAdapter: schemaAdapter, AutoInitializeSchema: true}, wl)
	if err != nil {
		pool.Close()
		return nil, nil, nil, fmt.Errorf("publisher: %w", err)
	}
	sub, err := wmsql.NewSubscriber(db, wmsql.SubscriberConfig{
		ConsumerGroup: cfg.Postgres.Group,
		SchemaAdapter: schemaAdapter,
		OffsetsAdapter: wmsql.DefaultPostgreSQLOffsetsAdapter{
			GenerateMessagesOffsetsTableName: func(topic string) string {
				return schema + "." + pgx.Identifier{"watermill_offsets_" + topic}.Sanitize()
			},
		},
		InitializeSchema: true,
		// Polling is the subscriber's only wake-up.
		PollInterval: 100 * time.Millisecond,
	}, wl)
	if err != nil {
		pool.Close()
		return nil, nil, nil, fmt.Errorf("subscriber: %w", err)
	}
	// The router closes the subscriber when it ran; closing it again is
	// harmless. The pool closes last.
	return pub, sub, []func() error{closePool, sub.Close}, nil
}
