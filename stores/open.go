package stores

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// Ledger is a store that holds both the dedup ledger and the result
// cache; every store of this package is one, so one event's checks are
// one round trip.
type Ledger interface {
	DedupStore
	ResultCache
}

// OpenConfig is what Open builds a store on.
type OpenConfig struct {
	// Redis is the client of a "redis" store; Open does not own it.
	Redis redis.UniversalClient
	// KeyPrefix starts the keys of a "redis" store.
	KeyPrefix string
	// PostgresURL is the database of a "postgres" store; Open opens a
	// pool of its own on it.
	PostgresURL string
	// Logger is for the store's own warnings; nil discards.
	Logger *slog.Logger
}

// Open opens the dedup and result-cache store of kind — "memory",
// "redis" or "postgres" — with its tables created, and returns it with
// a func that closes what Open opened. Topologies and the router's
// dedup.store / cache.store both open their stores here.
func Open(ctx context.Context, kind string, c OpenConfig) (Ledger, func() error, error) {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch kind {
	case "memory":
		m, err := NewMemoryStore(MemoryStoreConfig{})
		if err != nil {
			return nil, nil, err
		}
		return m, m.Close, nil
	case "redis":
		if c.Redis == nil {
			return nil, nil, errors.New("redis store: no Redis client (set redis.url or redis.url_env)")
		}
		s, err := NewRedisStore(c.Redis, RedisStoreConfig{KeyPrefix: c.KeyPrefix})
		if err != nil {
			return nil, nil, err
		}
		return s, s.Close, nil
	case "postgres":
		pcfg, err := pgxpool.ParseConfig(c.PostgresURL)
		if err != nil {
			return nil, nil, fmt.Errorf("postgres store: %w", err)
		}
		// The ledger does not wait for its writes to reach the disk: a
		// PostgreSQL crash may forget the last few hundred ms of claims
		// and successes, which at worst lets a redelivery run an effect
		// again (at least once), while every event saves two fsyncs.
		// Dead letters keep synchronous commits: an entry must be
		// durable before its message is acked.
		pcfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
		pool, err := pgxpool.NewWithConfig(ctx, pcfg)
		if err != nil {
			return nil, nil, fmt.Errorf("postgres store: %w", err)
		}
		s, err := NewPostgresStore(pool, PostgresStoreConfig{Logger: c.Logger})
		if err != nil {
			pool.Close()
			return nil, nil, err
		}
		closeAll := func() error { err := s.Close(); pool.Close(); return err }
		if err := s.Migrate(ctx); err != nil {
			return nil, nil, errors.Join(err, closeAll())
		}
		return s, closeAll, nil
	}
	return nil, nil, fmt.Errorf("unknown store %q (memory, redis or postgres)", kind)
}
