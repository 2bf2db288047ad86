package stores

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgresDeadLettersConfig configures a PostgresDeadLetters store.
type PostgresDeadLettersConfig struct {
	// Table is the table holding the entries, optionally schema-qualified.
	// Default "millrace_dead_letters".
	Table string
	// MaxEntries caps the table: each Put removes the entries beyond the
	// newest MaxEntries. 0 keeps everything.
	MaxEntries int
}

var pgTableRE = regexp.MustCompile(`^([a-z_][a-z0-9_]*\.)?[a-z_][a-z0-9_]*$`)

// SetDefaults fills the defaults.
func (c *PostgresDeadLettersConfig) SetDefaults() {
	if c.Table == "" {
		c.Table = "millrace_dead_letters"
	}
}

// Validate checks the table name, which is put into SQL text.
func (c PostgresDeadLettersConfig) Validate() error {
	var errs []error
	if !pgTableRE.MatchString(c.Table) {
		errs = append(errs, fmt.Errorf("postgres dead letters: table %q must be [schema.]name in lower case letters, digits and _", c.Table))
	}
	if c.MaxEntries < 0 {
		errs = append(errs, errors.New("postgres dead letters: MaxEntries must not be negative"))
	}
	return errors.Join(errs...)
}

// PostgresDeadLetters keeps dead letters in a PostgreSQL table; the
// entry's id is a bigserial. Run Migrate once before use.
type PostgresDeadLetters struct {
	pool  *pgxpool.Pool
	cfg   PostgresDeadLettersConfig
	table string // quoted
	index string // quoted, unqualified
	// parkIndex finds the parked groups (a partial index: most entries
	// are not parked).
	parkIndex string
}

var _ DeadLetters = (*PostgresDeadLetters)(nil)

// NewPostgresDeadLetters returns the store. It does not own pool.
func NewPostgresDeadLetters(pool *pgxpool.Pool, cfg PostgresDeadLettersConfig) (*PostgresDeadLetters, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	parts := strings.Split(cfg.Table, ".")
	return &PostgresDeadLetters{
		pool: pool, cfg: cfg,
		table:     pgx.Identifier(parts).Sanitize(),
		index:     pgx.Identifier{parts[len(parts)-1] + "_observer_last_failure"}.Sanitize(),
		parkIndex: pgx.Identifier{parts[len(parts)-1] + "_parked"}.Sanitize(),
	}, nil
}

// Migrate creates the table and its index when they are missing. It is
// idempotent and safe to run from several processes at once.
func (s *PostgresDeadLetters) Migrate(ctx context.Context) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres dead letters: migrate: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	// Concurrent CREATE ... IF NOT EXISTS may still collide on the
	// catalog's unique indexes; a transaction lock serializes them.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, "millrace migrate "+s.cfg.Table); err != nil {
		return fmt.Errorf("postgres dead letters: migrate: %w", err)
	}
	ddl := `CREATE TABLE IF NOT EXISTS ` + s.table + ` (
	id            bigserial PRIMARY KEY,
	event_id      text NOT NULL DEFAULT '',
	observer      text NOT NULL DEFAULT '',
	action        text NOT NULL DEFAULT '',
	reason        text NOT NULL,
	error         text NOT NULL DEFAULT '',
	attempts      integer NOT NULL DEFAULT 0,
	first_failure timestamptz NOT NULL,
	last_failure  timestamptz NOT NULL,
	topic         text NOT NULL DEFAULT '',
	payload       bytea NOT NULL,
	succeeded     jsonb NOT NULL DEFAULT '[]'
);
ALTER TABLE ` + s.table + ` ADD COLUMN IF NOT EXISTS succeeded jsonb NOT NULL DEFAULT '[]';
ALTER TABLE ` + s.table + ` ADD COLUMN IF NOT EXISTS entity_key text NOT NULL DEFAULT '';
ALTER TABLE ` + s.table + ` ADD COLUMN IF NOT EXISTS parked boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS ` + s.parkIndex + ` ON ` + s.table + ` (observer, entity_key, id) WHERE parked;
CREATE INDEX IF NOT EXISTS ` + s.index + ` ON ` + s.table + ` (observer, last_failure);`
	if _, err := tx.Exec(ctx, ddl); err != nil {
		return fmt.Errorf("postgres dead letters: migrate: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres dead letters: migrate: %w", err)
	}
	return nil
}

const pgColumns = `id, event_id, observer, action, reason, error, attempts, first_failure, last_failure, topic, payload, succeeded, entity_key, parked`

// Put inserts dl and returns its id.
func (s *PostgresDeadLetters) Put(ctx context.Context, dl DeadLetter) (string, error) {
	dl = normalizeEntry(dl)
	succeeded, err := json.Marshal(dl.Succeeded)
	if err != nil {
		return "", fmt.Errorf("postgres dead letters: encode: %w", err)
	}
	if dl.Succeeded == nil {
		succeeded = []byte("[]")
	}
	var id int64
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO `+s.table+` (event_id, observer, action, reason, error, attempts, first_failure, last_failure, topic, payload, succeeded, entity_key, parked)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13) RETURNING id`,
			dl.EventID, dl.Observer, dl.Action, dl.Reason, dl.Error, dl.Attempts, dl.FirstFailure, dl.LastFailure, dl.Topic, dl.Payload,
			string(succeeded), dl.Key, dl.Parked).Scan(&id)
		if err != nil || s.cfg.MaxEntries == 0 {
			return err
		}
		// The primary key finds the cut-off without a scan.
		_, err = tx.Exec(ctx, `DELETE FROM `+s.table+` WHERE id <= (SELECT id FROM `+s.table+` ORDER BY id DESC OFFSET $1 LIMIT 1)`, s.cfg.MaxEntries)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("postgres dead letters: put: %w", err)
	}
	return strconv.FormatInt(id, 10), nil
}

func scanPG(row pgx.Row) (DeadLetter, error) {
	var (
		dl        DeadLetter
		id        int64
		succeeded []byte
	)
	err := row.Scan(&id, &dl.EventID, &dl.Observer, &dl.Action, &dl.Reason, &dl.Error, &dl.Attempts,
		&dl.FirstFailure, &dl.LastFailure, &dl.Topic, &dl.Payload, &succeeded, &dl.Key, &dl.Parked)
	if err != nil {
		return DeadLetter{}, err
	}
	if err := json.Unmarshal(succeeded, &dl.Succeeded); err != nil {
		return DeadLetter{}, fmt.Errorf("entry %d: succeeded: %w", id, err)
	}
	if len(dl.Succeeded) == 0 {
		dl.Succeeded = nil
	}
	dl.ID = strconv.FormatInt(id, 10)
	dl.FirstFailure, dl.LastFailure = dl.FirstFailure.UTC(), dl.LastFailure.UTC()
	if dl.Payload == nil {
		dl.Payload = []byte{}
	}
	return dl, nil
}

// Get returns the entry with id, or an error wrapping ErrNotFound.
func (s *PostgresDeadLetters) Get(ctx context.Context, id string) (DeadLetter, error) {
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		return DeadLetter{}, fmt.Errorf("postgres dead letters: %q: %w", id, ErrNotFound)
	}
	dl, err := scanPG(s.pool.QueryRow(ctx, `SELECT `+pgColumns+` FROM `+s.table+` WHERE id = $1`, n))
	if errors.Is(err, pgx.ErrNoRows) {
		return DeadLetter{}, fmt.Errorf("postgres dead letters: %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return DeadLetter{}, fmt.Errorf("postgres dead letters: get %s: %w", id, err)
	}
	return dl, nil
}

// List returns the matching entries, oldest first.
func (s *PostgresDeadLetters) List(ctx context.Context, f DeadLetterFilter) ([]DeadLetter, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	var (
		where []string
		args  []any
	)
	if f.Observer != "" {
		args = append(args, f.Observer)
		where = append(where, "observer = $"+strconv.Itoa(len(args)))
	}
	if f.Key != "" {
		args = append(args, f.Key)
		where = append(where, "entity_key = $"+strconv.Itoa(len(args)))
	}
	if f.Parked {
		where = append(where, "parked")
	}
	if !f.Since.IsZero() {
		args = append(args, f.Since.Truncate(time.Microsecond))
		where = append(where, "last_failure >= $"+strconv.Itoa(len(args)))
	}
	q := `SELECT ` + pgColumns + ` FROM ` + s.table
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	args = append(args, limit)
	q += ` ORDER BY id LIMIT $` + strconv.Itoa(len(args))
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("postgres dead letters: list: %w", err)
	}
	defer rows.Close()
	out := []DeadLetter{}
	for rows.Next() {
		dl, err := scanPG(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres dead letters: list: %w", err)
		}
		out = append(out, dl)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres dead letters: list: %w", err)
	}
	return out, nil
}

// Delete removes the entries; ids that are unknown are ignored.
func (s *PostgresDeadLetters) Delete(ctx context.Context, ids ...string) error {
	ns := make([]int64, 0, len(ids))
	for _, id := range ids {
		if n, err := strconv.ParseInt(id, 10, 64); err == nil {
			ns = append(ns, n)
		}
	}
	if len(ns) == 0 {
		return nil
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM `+s.table+` WHERE id = ANY($1)`, ns); err != nil {
		return fmt.Errorf("postgres dead letters: delete: %w", err)
	}
	return nil
}

// Purge removes every entry and returns their number.
func (s *PostgresDeadLetters) Purge(ctx context.Context) (int, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM `+s.table)
	if err != nil {
		return 0, fmt.Errorf("postgres dead letters: purge: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Count returns the number of entries. It counts rows exactly, which
// reads the primary key index; a store that grows past millions of rows
// should set MaxEntries.
func (s *PostgresDeadLetters) Count(ctx context.Context) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM `+s.table).Scan(&n); err != nil {
		return 0, fmt.Errorf("postgres dead letters: count: %w", err)
	}
	return n, nil
}
