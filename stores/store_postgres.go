package stores

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
	"github.com/jackc/pgx/v5/pgconn"
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
// once before use; Close stops the janitor and the batching. It does
// not own the pool.
//
// Concurrent calls share round trips: the calls that arrive while a
// batch is on the wire go out together in the next one (see batcher),
// as one set-based statement per kind of call, all in one pgx batch.
// Each call keeps its own answer; when the server refuses a batch, its
// calls are sent again one by one, so that only the call at fault fails.
type PostgresStore struct {
	pool   *pgxpool.Pool
	cfg    PostgresStoreConfig
	table  string // quoted
	logger *slog.Logger
	b      *batcher[*pgCall]

	sql struct {
		reserve, extend, commit, release, lookup, store, sweep string
		// The set-based forms, one statement for many keys.
		reserveMany, commitMany, storeMany, lookupMany string
	}

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
	// Commit marks the key done whoever held it (see DedupStore.Commit)
	// and answers whether the row, as it was before the statement, was
	// another owner's live claim: the outer SELECT does not see the
	// upsert's effect.
	s.sql.commit = `WITH up AS (
  INSERT INTO ` + t + ` AS l (key, owner, done, expires_at)
  VALUES ($1, '', true, now() + $3 * interval '1 millisecond')
  ON CONFLICT (key) DO UPDATE SET owner = '', done = true, expires_at = EXCLUDED.expires_at
)
SELECT NOT COALESCE((SELECT NOT l.done AND l.owner <> $2 AND l.expires_at > now() FROM ` + t + ` l WHERE l.key = $1), false)`
	s.sql.release = `DELETE FROM ` + t + ` WHERE key = $1 AND owner = $2 AND NOT done`
	s.sql.lookup = `SELECT key FROM ` + t + ` WHERE key = ANY($1) AND done AND expires_at > now()`
	s.sql.store = `INSERT INTO ` + t + ` (key, owner, done, expires_at)
VALUES ($1, '', true, now() + $2 * interval '1 millisecond')
ON CONFLICT (key) DO UPDATE SET owner = '', done = true, expires_at = EXCLUDED.expires_at`
	s.sql.sweep = `DELETE FROM ` + t + ` WHERE ctid IN (SELECT ctid FROM ` + t + ` WHERE expires_at <= now() LIMIT 10000)`

	// The set-based forms take one array per parameter and never see a
	// key twice (see pgRounds), since one statement cannot upsert a row
	// twice. Each statement locks its keys in order, so that two batches
	// sharing keys rarely deadlock (and when they do, exec sends their
	// calls again one by one). Rows are read by a scalar subquery on the
	// key, which the planner cannot turn into a join: a plan for a join
	// or a key = ANY scan, cached while the table was small, may scan the
	// whole table once it has grown.
	s.sql.reserveMany = `WITH i AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]) AS i(key, owner, ms)),
claim AS (
  INSERT INTO ` + t + ` AS l (key, owner, done, expires_at)
  SELECT key, owner, false, now() + ms * interval '1 millisecond' FROM i ORDER BY key
  ON CONFLICT (key) DO UPDATE SET owner = EXCLUDED.owner, done = false, expires_at = EXCLUDED.expires_at
  WHERE l.expires_at <= now()
  RETURNING l.key
)
SELECT i.key, i.key IN (SELECT key FROM claim),
  (SELECT o.done FROM ` + t + ` o WHERE o.key = i.key AND o.expires_at > now())
FROM i`
	s.sql.commitMany = `WITH i AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]) AS i(key, owner, ms)),
up AS (
  INSERT INTO ` + t + ` AS l (key, owner, done, expires_at)
  SELECT key, '', true, now() + ms * interval '1 millisecond' FROM i ORDER BY key
  ON CONFLICT (key) DO UPDATE SET owner = '', done = true, expires_at = EXCLUDED.expires_at
)
SELECT i.key FROM i
WHERE NOT COALESCE((SELECT NOT l.done AND l.owner <> i.owner AND l.expires_at > now() FROM ` + t + ` l WHERE l.key = i.key), false)`
	s.sql.storeMany = `INSERT INTO ` + t + ` (key, owner, done, expires_at)
SELECT key, '', true, now() + ms * interval '1 millisecond'
FROM unnest($1::text[], $2::int8[]) AS i(key, ms) ORDER BY key
ON CONFLICT (key) DO UPDATE SET owner = '', done = true, expires_at = EXCLUDED.expires_at`
	s.sql.lookupMany = `SELECT i.key FROM unnest($1::text[]) AS i(key)
WHERE (SELECT l.done AND l.expires_at > now() FROM ` + t + ` l WHERE l.key = i.key)`
	s.b = newBatcher(pgWorkers, pgMaxBatch, true, s.exec)
	return s, nil
}

// Migrate creates the table and its index if they do not exist, and
// starts the janitor. It is idempotent and safe to run from several
// processes at once.
func (s *PostgresStore) Migrate(ctx context.Context) error {
	idx := pgx.Identifier{strings.ReplaceAll(s.cfg.Table, ".", "_") + "_expires_at"}.Sanitize()
	ddl := `CREATE TABLE IF NOT EXISTS ` + s.table + ` (
  key        text PRIMARY KEY,
  owner      text NOT NULL,
  done       boolean NOT NULL,
  expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS ` + idx + ` ON ` + s.table + ` (expires_at)`
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Two processes starting at once on a new database both find the
		// table missing, and the second CREATE ... IF NOT EXISTS fails on
		// the catalog's unique index (pg_type_typname_nsp_index): a
		// transaction lock serializes them.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, "millrace migrate "+s.cfg.Table); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, ddl)
		return err
	})
	if err != nil {
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

// Close fails the calls still waiting with ErrStoreClosed, cancels the
// batches on the wire and stops the janitor; later calls fail at once.
// It is safe to call twice, and before Migrate.
func (s *PostgresStore) Close() error {
	s.b.close()
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

// Batching: two batches in flight keep the server busy while the next
// one fills, on two of the pool's connections.
const (
	pgWorkers  = 2
	pgMaxBatch = 256
)

type pgOp uint8

const (
	pgOpReserve pgOp = iota + 1 // with a lookup when keys is set
	pgOpCommit
	pgOpStore
	pgOpExtend
	pgOpRelease
	pgOpLookup
)

// pgCall is one call in a batch, with its answers: a reserve's in res,
// resErr, hits and hitsErr, the others' in ok and call.err.
type pgCall struct {
	call
	op    pgOp
	key   string
	owner string
	ms    int64
	keys  []string

	res     Reservation
	resErr  error
	hits    []bool
	hitsErr error
	ok      bool // extend and commit: the row was ours
}

// fail answers c with err for each of its halves.
func (c *pgCall) fail(err error) {
	if c.op == pgOpReserve {
		c.resErr = fmt.Errorf("postgres store: reserve: %w", err)
		if len(c.keys) > 0 {
			c.hitsErr = fmt.Errorf("postgres store: lookup: %w", err)
		}
		return
	}
	c.err = err
}

// exec sends a batch. A batch is one transaction: when the server
// refuses a statement, nothing of it took effect, and its calls are sent
// again one by one, so that a bad call or a deadlock with another batch
// fails only the call at fault.
func (s *PostgresStore) exec(ctx context.Context, batch []*pgCall) {
	err := s.execSet(ctx, batch)
	if err == nil {
		return
	}
	var pgErr *pgconn.PgError
	if len(batch) > 1 && errors.As(err, &pgErr) {
		for _, c := range batch {
			// Forget what the rolled-back batch answered.
			c.res, c.resErr, c.hits, c.hitsErr, c.ok = 0, nil, nil, nil, false
			if err := c.ctx.Err(); err != nil {
				c.fail(err)
				continue
			}
			// Until this caller gives up, or the store closes.
			cctx, cancel := context.WithCancel(c.ctx)
			stop := context.AfterFunc(ctx, cancel)
			s.execOne(cctx, c)
			stop()
			cancel()
		}
		return
	}
	for _, c := range batch {
		c.fail(err)
	}
}

// pgGroup is the calls of one kind in one round, as the arrays of a
// set-based statement.
type pgGroup struct {
	keys, owners []string
	ms           []int64
	calls        map[string]*pgCall
}

func (g *pgGroup) add(c *pgCall) {
	if g.calls == nil {
		g.calls = map[string]*pgCall{}
	}
	g.keys, g.owners, g.ms = append(g.keys, c.key), append(g.owners, c.owner), append(g.ms, c.ms)
	g.calls[c.key] = c
}

// pgRound holds the reserves, commits and stores of one set-based round.
type pgRound struct{ reserve, commit, store pgGroup }

// pgRounds splits the reserves, commits and stores into rounds in which
// no key comes twice; the calls of one batch are concurrent, so any
// order among them is one their callers could have seen.
func pgRounds(batch []*pgCall) []pgRound {
	var rounds []pgRound
	var seen []map[string]bool
	for _, c := range batch {
		if c.op != pgOpReserve && c.op != pgOpCommit && c.op != pgOpStore {
			continue
		}
		r := 0
		for r < len(rounds) && seen[r][c.key] {
			r++
		}
		if r == len(rounds) {
			rounds = append(rounds, pgRound{})
			seen = append(seen, map[string]bool{})
		}
		seen[r][c.key] = true
		switch c.op {
		case pgOpReserve:
			rounds[r].reserve.add(c)
		case pgOpCommit:
			rounds[r].commit.add(c)
		default:
			rounds[r].store.add(c)
		}
	}
	return rounds
}

// execSet sends the batch in one pgx batch: one set-based statement per
// kind and round for the reserves, commits and stores, one lookup for
// every key looked up, and the extends and releases, which are rare, as
// they are.
func (s *PostgresStore) execSet(ctx context.Context, batch []*pgCall) error {
	b := &pgx.Batch{}
	for _, r := range pgRounds(batch) {
		if g := r.reserve; g.calls != nil {
			b.Queue(s.sql.reserveMany, g.keys, g.owners, g.ms).Query(func(rows pgx.Rows) error {
				var key string
				var claimed bool
				var done *bool
				_, err := pgx.ForEachRow(rows, []any{&key, &claimed, &done}, func() error {
					c := g.calls[key]
					switch {
					case c == nil:
						return fmt.Errorf("reserve: answer for an unknown key %q", key)
					case claimed:
						c.res = Claimed
					case done != nil && *done:
						c.res = Done
					default:
						c.res = InFlight
					}
					return nil
				})
				return err
			})
		}
		if g := r.commit; g.calls != nil {
			b.Queue(s.sql.commitMany, g.keys, g.owners, g.ms).Query(func(rows pgx.Rows) error {
				var key string
				_, err := pgx.ForEachRow(rows, []any{&key}, func() error {
					if c := g.calls[key]; c != nil {
						c.ok = true
					}
					return nil
				})
				return err
			})
		}
		if g := r.store; g.calls != nil {
			b.Queue(s.sql.storeMany, g.keys, g.ms)
		}
	}
	var lookup []string
	for _, c := range batch {
		switch c.op {
		case pgOpExtend:
			b.Queue(s.sql.extend, c.key, c.owner, c.ms).Exec(func(tag pgconn.CommandTag) error {
				c.ok = tag.RowsAffected() > 0
				return nil
			})
		case pgOpRelease:
			b.Queue(s.sql.release, c.key, c.owner)
		case pgOpReserve, pgOpLookup:
			lookup = append(lookup, c.keys...)
		}
	}
	var found map[string]bool
	if len(lookup) > 0 {
		b.Queue(s.sql.lookupMany, lookup).Query(func(rows pgx.Rows) error {
			keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
			found = make(map[string]bool, len(keys))
			for _, k := range keys {
				found[k] = true
			}
			return err
		})
	}
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	for _, c := range batch {
		if c.op == pgOpReserve && c.res == 0 {
			c.resErr = errors.New("postgres store: reserve: no answer for the key")
		}
		if len(c.keys) > 0 && (c.op == pgOpReserve || c.op == pgOpLookup) {
			c.hits = make([]bool, len(c.keys))
			for i, k := range c.keys {
				c.hits[i] = found[k]
			}
		}
	}
	return nil
}

// execOne sends one call with its own statements.
func (s *PostgresStore) execOne(ctx context.Context, c *pgCall) {
	switch c.op {
	case pgOpReserve:
		b := &pgx.Batch{}
		b.Queue(s.sql.reserve, c.key, c.owner, c.ms).QueryRow(func(row pgx.Row) error {
			c.res, c.resErr = scanReservation(row)
			return nil
		})
		if len(c.keys) > 0 {
			b.Queue(s.sql.lookup, c.keys).Query(func(rows pgx.Rows) error {
				c.hits, c.hitsErr = collectHits(rows, c.keys)
				return nil
			})
		}
		if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
			// The batch did not reach the server, or a callback did not run.
			if c.res == 0 && c.resErr == nil {
				c.resErr = fmt.Errorf("postgres store: reserve: %w", err)
			}
			if len(c.keys) > 0 && c.hits == nil && c.hitsErr == nil {
				c.hitsErr = fmt.Errorf("postgres store: lookup: %w", err)
			}
		}
	case pgOpLookup:
		rows, err := s.pool.Query(ctx, s.sql.lookup, c.keys)
		if err != nil {
			c.err = err
			return
		}
		c.hits, c.err = collectHits(rows, c.keys)
	case pgOpCommit:
		c.err = s.pool.QueryRow(ctx, s.sql.commit, c.key, c.owner, c.ms).Scan(&c.ok)
	case pgOpExtend:
		tag, err := s.pool.Exec(ctx, s.sql.extend, c.key, c.owner, c.ms)
		c.ok, c.err = err == nil && tag.RowsAffected() > 0, err
	case pgOpStore:
		_, c.err = s.pool.Exec(ctx, s.sql.store, c.key, c.ms)
	case pgOpRelease:
		_, c.err = s.pool.Exec(ctx, s.sql.release, c.key, c.owner)
	}
}

// Reserve implements DedupStore.
func (s *PostgresStore) Reserve(ctx context.Context, key, owner string, lease time.Duration) (Reservation, error) {
	c := &pgCall{op: pgOpReserve, key: key, owner: owner, ms: ms(lease)}
	if err := s.b.do(ctx, c); err != nil {
		return 0, fmt.Errorf("postgres store: reserve: %w", err)
	}
	return c.res, c.resErr
}

// Extend implements DedupStore.
func (s *PostgresStore) Extend(ctx context.Context, key, owner string, lease time.Duration) error {
	c := &pgCall{op: pgOpExtend, key: key, owner: owner, ms: ms(lease)}
	if err := s.b.do(ctx, c); err != nil {
		return fmt.Errorf("postgres store: extend: %w", err)
	}
	if !c.ok {
		return ErrLeaseLost
	}
	return nil
}

// Commit implements DedupStore.
func (s *PostgresStore) Commit(ctx context.Context, key, owner string, window time.Duration) error {
	c := &pgCall{op: pgOpCommit, key: key, owner: owner, ms: ms(window)}
	if err := s.b.do(ctx, c); err != nil {
		return fmt.Errorf("postgres store: commit: %w", err)
	}
	if !c.ok {
		return ErrLeaseLost
	}
	return nil
}

// Release implements DedupStore.
func (s *PostgresStore) Release(ctx context.Context, key, owner string) error {
	c := &pgCall{op: pgOpRelease, key: key, owner: owner}
	if err := s.b.do(ctx, c); err != nil {
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
	c := &pgCall{op: pgOpLookup, keys: keys}
	if err := s.b.do(ctx, c); err != nil {
		return nil, fmt.Errorf("postgres store: lookup: %w", err)
	}
	return c.hits, nil
}

// Store implements ResultCache.
func (s *PostgresStore) Store(ctx context.Context, key string, ttl time.Duration) error {
	c := &pgCall{op: pgOpStore, key: key, ms: ms(ttl)}
	if err := s.b.do(ctx, c); err != nil {
		return fmt.Errorf("postgres store: store: %w", err)
	}
	return nil
}

// ReserveLookup implements ReserveLooker: the reserve and the lookup go
// in the same batch, which is one round trip.
func (s *PostgresStore) ReserveLookup(ctx context.Context, key, owner string, lease time.Duration, cacheKeys []string) (ReserveLookupResult, error) {
	c := &pgCall{op: pgOpReserve, key: key, owner: owner, ms: ms(lease), keys: cacheKeys}
	if err := s.b.do(ctx, c); err != nil {
		// c's answers are not ours to read: its batch may still be on
		// the wire.
		r := ReserveLookupResult{ReserveErr: fmt.Errorf("postgres store: reserve: %w", err)}
		if len(cacheKeys) > 0 {
			r.LookupErr = fmt.Errorf("postgres store: lookup: %w", err)
		}
		return r, nil
	}
	return ReserveLookupResult{Reservation: c.res, ReserveErr: c.resErr, Hits: c.hits, LookupErr: c.hitsErr}, nil
}
