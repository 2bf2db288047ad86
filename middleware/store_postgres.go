package middleware

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgresStoreConfig configures a PostgresStore.
type PostgresStoreConfig struct {
	// Table holds the keys, optionally schema-qualified. Default
	// "millrace_ledger".
	Table string
	// JanitorInterval is how often expired rows are deleted. Default 1m.
	JanitorInterval time.Duration
	// Logger reports janitor failures; nil discards.
	Logger *slog.Logger
}

var ledgerTableRE = regexp.MustCompile(`^([a-z_][a-z0-9_]*\.)?[a-z_][a-z0-9_]*$`)

// SetDefaults fills the defaults.
func (c *PostgresStoreConfig) SetDefaults() {
	if c.Table == "" {
		c.Table = "millrace_ledger"
	}
	if c.JanitorInterval == 0 {
		c.JanitorInterval = time.Minute
	}
}

// Validate checks the table name, which is put into SQL text.
func (c PostgresStoreConfig) Validate() error {
	var errs []error
	if !ledgerTableRE.MatchString(c.Table) {
		errs = append(errs, fmt.Errorf("postgres store: table %q must be [schema.]name in lower case letters, digits and _", c.Table))
	}
	if c.JanitorInterval <= 0 {
		errs = append(errs, errors.New("postgres store: JanitorInterval must be positive"))
	}
	return errors.Join(errs...)
}

// PostgresStore is the dedup ledger and result cache in a PostgreSQL
// table with a unique key and an expiry, shared by every process that
// uses the same table (the postgres topology). The server's clock
// decides expiry, so processes need not agree on the time. Run Migrate
// once before use; Close stops the janitor. It does not own the pool.
type PostgresStore struct {
	pool   *pgxpool.Pool
	cfg    PostgresStoreConfig
	table  string // quoted
	logger *slog.Logger

	sql struct{ reserve, extend, commit, release, lookup, store, sweep string }

	startOnce sync.Once
	stopOnce  sync.Once
	stop      chan struct{}
	done      chan struct{}
}

var (
	_ DedupStore    = (*PostgresStore)(nil)
	_ ResultCache   = (*PostgresStore)(nil)
	_ ReserveLooker = (*PostgresStore)(nil)
)

// NewPostgresStore returns a store on pool. The janitor starts with
// Migrate.
func NewPostgresStore(pool *pgxpool.Pool, cfg PostgresStoreConfig) (*PostgresStore, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pool == nil {
		return nil, errors.New("postgres store: nil pool")
	}
	s := &PostgresStore{pool: pool, cfg: cfg, logger: cfg.Logger, stop: make(chan struct{}), done: make(chan struct{})}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	s.table = pgx.Identifier(strings.Split(cfg.Table, ".")).Sanitize()
	t := s.table
	// Reserve: the upsert claims a free or expired key; the outer SELECT
	// reads the row as it was before the statement, which tells done from
	// in flight when the upsert did nothing. A row committed by a
	// concurrent claim after the statement began is not visible to it:
	// done is then NULL, read as in flight, and the caller asks again.
	s.sql.reserve = `WITH claim AS (
  INSERT INTO ` + t + ` AS l (key, owner, done, expires_at)
  VALUES ($1, $2, false, now() + $3 * interval '1 millisecond')
  ON CONFLICT (key) DO UPDATE SET owner = EXCLUDED.owner, done = false, expires_at = EXCLUDED.expires_at
  WHERE l.expires_at <= now()
  RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM claim), (SELECT done FROM ` + t + ` WHERE key = $1 AND expires_at > now())`
	s.sql.extend = `UPDATE ` + t + ` SET expires_at = now() + $3 * interval '1 millisecond'
WHERE key = $1 AND owner = $2 AND NOT done AND expires_at > now()`
	s.sql.commit = `INSERT INTO ` + t + ` AS l (key, owner, done, expires_at)
VALUES ($1, '', true, now() + $3 * interval '1 millisecond')
ON CONFLICT (key) DO UPDATE SET owner = '', done = true, expires_at = EXCLUDED.expires_at
WHERE l.done OR l.owner = $2 OR l.expires_at <= now()`
	s.sql.release = `DELETE FROM ` + t + ` WHERE key = $1 AND owner = $2 AND NOT done`
	s.sql.lookup = `SELECT key FROM ` + t + ` WHERE key = ANY($1) AND done AND expires_at > now()`
	s.sql.store = `INSERT INTO ` + t + ` (key, owner, done, expires_at)
VALUES ($1, '', true, now() + $2 * interval '1 millisecond')
ON CONFLICT (key) DO UPDATE SET owner = '', done = true, expires_at = EXCLUDED.expires_at`
	s.sql.sweep = `DELETE FROM ` + t + ` WHERE ctid IN (SELECT ctid FROM ` + t + ` WHERE expires_at <= now() LIMIT 10000)`
	return s, nil
}

// Migrate creates the table and its index if they do not exist, and
// starts the janitor. It is idempotent.
func (s *PostgresStore) Migrate(ctx context.Context) error {
	idx := pgx.Identifier{strings.ReplaceAll(s.cfg.Table, ".", "_") + "_expires_at"}.Sanitize()
	ddl := `CREATE TABLE IF NOT EXISTS ` + s.table + ` (
  key        text PRIMARY KEY,
  owner      text NOT NULL,
  done       boolean NOT NULL,
  expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS ` + idx + ` ON ` + s.table + ` (expires_at)`
	if _, err := s.pool.Exec(ctx, ddl); err != nil {
		return fmt.Errorf("postgres store: migrate %s: %w", s.cfg.Table, err)
	}
	s.startOnce.Do(func() { go s.janitor() })
	return nil
}

func (s *PostgresStore) janitor() {
	defer close(s.done)
	t := time.NewTicker(s.cfg.JanitorInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.JanitorInterval)
			for {
				tag, err := s.pool.Exec(ctx, s.sql.sweep)
				if err != nil {
					s.logger.Warn("postgres store: deleting expired keys failed", "table", s.cfg.Table, "err", err)
					break
				}
				if tag.RowsAffected() < 10000 {
					break
				}
			}
			cancel()
		}
	}
}

// Close stops the janitor. It is safe to call twice, and before Migrate.
func (s *PostgresStore) Close() error {
	s.stopOnce.Do(func() { close(s.stop) })
	s.startOnce.Do(func() { close(s.done) })
	<-s.done
	return nil
}

func ms(d time.Duration) int64 { return max(d, time.Millisecond).Milliseconds() }

func scanReservation(row pgx.Row) (Reservation, error) {
	var claimed bool
	var done *bool
	if err := row.Scan(&claimed, &done); err != nil {
		return 0, fmt.Errorf("postgres store: reserve: %w", err)
	}
	switch {
	case claimed:
		return Claimed, nil
	case done != nil && *done:
		return Done, nil
	}
	return InFlight, nil
}

// Reserve implements DedupStore.
func (s *PostgresStore) Reserve(ctx context.Context, key, owner string, lease time.Duration) (Reservation, error) {
	return scanReservation(s.pool.QueryRow(ctx, s.sql.reserve, key, owner, ms(lease)))
}

// Extend implements DedupStore.
func (s *PostgresStore) Extend(ctx context.Context, key, owner string, lease time.Duration) error {
	tag, err := s.pool.Exec(ctx, s.sql.extend, key, owner, ms(lease))
	if err != nil {
		return fmt.Errorf("postgres store: extend: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return ErrLeaseLost
	}
	return nil
}

// Commit implements DedupStore.
func (s *PostgresStore) Commit(ctx context.Context, key, owner string, window time.Duration) error {
	tag, err := s.pool.Exec(ctx, s.sql.commit, key, owner, ms(window))
	if err != nil {
		return fmt.Errorf("postgres store: commit: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return ErrLeaseLost
	}
	return nil
}

// Release implements DedupStore.
func (s *PostgresStore) Release(ctx context.Context, key, owner string) error {
	if _, err := s.pool.Exec(ctx, s.sql.release, key, owner); err != nil {
		return fmt.Errorf("postgres store: release: %w", err)
	}
	return nil
}

func collectHits(rows pgx.Rows, keys []string) ([]bool, error) {
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("postgres store: lookup: %w", err)
	}
	set := make(map[string]bool, len(found))
	for _, k := range found {
		set[k] = true
	}
	out := make([]bool, len(keys))
	for i, k := range keys {
		out[i] = set[k]
	}
	return out, nil
}

// Lookup implements ResultCache with one query.
func (s *PostgresStore) Lookup(ctx context.Context, keys ...string) ([]bool, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, s.sql.lookup, keys)
	if err != nil {
		return nil, fmt.Errorf("postgres store: lookup: %w", err)
	}
	return collectHits(rows, keys)
}

// Store implements ResultCache.
func (s *PostgresStore) Store(ctx context.Context, key string, ttl time.Duration) error {
	if _, err := s.pool.Exec(ctx, s.sql.store, key, ms(ttl)); err != nil {
		return fmt.Errorf("postgres store: store: %w", err)
	}
	return nil
}

// ReserveLookup implements ReserveLooker: both statements go in one
// pgx batch, which is one round trip.
func (s *PostgresStore) ReserveLookup(ctx context.Context, key, owner string, lease time.Duration, cacheKeys []string) (ReserveLookupResult, error) {
	var r ReserveLookupResult
	b := &pgx.Batch{}
	b.Queue(s.sql.reserve, key, owner, ms(lease)).QueryRow(func(row pgx.Row) error {
		r.Reservation, r.ReserveErr = scanReservation(row)
		return nil
	})
	if len(cacheKeys) > 0 {
		b.Queue(s.sql.lookup, cacheKeys).Query(func(rows pgx.Rows) error {
			r.Hits, r.LookupErr = collectHits(rows, cacheKeys)
			return nil
		})
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		// The batch did not reach the server, or a callback did not run.
		if r.Reservation == 0 && r.ReserveErr == nil {
			r.ReserveErr = fmt.Errorf("postgres store: reserve: %w", err)
		}
		if len(cacheKeys) > 0 && r.Hits == nil && r.LookupErr == nil {
			r.LookupErr = fmt.Errorf("postgres store: lookup: %w", err)
		}
	}
	return r, nil
}
