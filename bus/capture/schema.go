package capture

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultSchema holds the change log when Config.Schema is empty.
const DefaultSchema = "millrace"

//go:embed sql/*.sql
var migrations embed.FS

// schemaRE keeps schema names plain, so that the trigger and channel
// names derived from them stay within PostgreSQL's 63 bytes.
var schemaRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,47}$`)

func checkSchema(schema string) error {
	if !schemaRE.MatchString(schema) {
		return fmt.Errorf("capture: schema %q must be a plain identifier of at most 48 bytes", schema)
	}
	return nil
}

func ident(s string) string { return pgx.Identifier{s}.Sanitize() }

func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// lockKey turns a name into a key for PostgreSQL's advisory locks.
func lockKey(parts ...string) int64 {
	h := fnv.New64a()
	for _, p := range parts {
		_, _ = h.Write([]byte(p))
		_, _ = h.Write([]byte{0})
	}
	return int64(h.Sum64())
}

// Trigger and channel names, derived from the schema so that several
// capture schemas can watch one database.
func captureTrigger(schema string) string { return schema + "_capture" }
func notifyTrigger(schema string) string  { return schema + "_notify" }

// Channel is the LISTEN/NOTIFY channel of a capture schema.
func Channel(schema string) string { return schema + "_changes" }

// Migrate creates the capture schema (the change log, the checkpoints
// and the trigger functions) or brings it up to date. It is idempotent and
// safe to run from several processes at once.
func Migrate(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	if err := checkSchema(schema); err != nil {
		return err
	}
	files, err := fs.Glob(migrations, "sql/*.sql")
	if err != nil {
		return fmt.Errorf("capture: migrations: %w", err)
	}
	sort.Strings(files)
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("millrace migrate", schema)); err != nil {
			return err
		}
		q := ident(schema)
		if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+q); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+q+`.migrations (
			version    int         PRIMARY KEY,
			applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, "SELECT version FROM "+q+".migrations")
		if err != nil {
			return err
		}
		applied, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			return err
		}
		done := map[int]bool{}
		for _, v := range applied {
			done[int(v)] = true
		}
		r := strings.NewReplacer("{{schema}}", q, "{{schema_lit}}", strings.ReplaceAll(q, "'", "''"))
		for _, f := range files {
			base := f[strings.LastIndexByte(f, '/')+1:]
			v, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
			if err != nil {
				return fmt.Errorf("migration %s: bad name", base)
			}
			if done[v] {
				continue
			}
			body, err := migrations.ReadFile(f)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, r.Replace(string(body))); err != nil {
				return fmt.Errorf("migration %s: %w", base, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO "+q+".migrations (version) VALUES ($1)", v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("capture: migrate schema %s: %w", schema, err)
	}
	return nil
}

// Querier is what PrimaryKey reads the catalog through: a pool, a
// connection or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// PrimaryKey returns the primary-key columns of the table with this oid,
// in key order; none when it has no primary key. The trigger capture,
// the WAL capture and backfill derive entity ids from them alike.
func PrimaryKey(ctx context.Context, q Querier, oid uint32) ([]string, error) {
	rows, err := q.Query(ctx, `
		SELECT a.attname
		FROM pg_index i
		CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		WHERE i.indrelid = $1 AND i.indisprimary
		ORDER BY k.ord`, oid)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// table is a watched table resolved in the catalog.
type table struct {
	name string // "schema.table", quoted for SQL
	nsp  string
	rel  string
	pk   []string
}

// resolve finds name in the catalog; ok is false when it does not exist.
func resolve(ctx context.Context, tx pgx.Tx, name string) (t table, ok bool, err error) {
	var oid uint32
	err = tx.QueryRow(ctx, `
		SELECT c.oid, n.nspname, c.relname
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')`, name).Scan(&oid, &t.nsp, &t.rel)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, false, nil
	}
	if err != nil {
		return t, false, fmt.Errorf("table %s: %w", name, err)
	}
	t.name = ident(t.nsp) + "." + ident(t.rel)
	t.pk, err = PrimaryKey(ctx, tx, oid)
	if err != nil {
		return t, false, fmt.Errorf("table %s: primary key: %w", name, err)
	}
	return t, true, nil
}

// Watch installs the capture triggers on tables ("schema.table"): a
// row-level trigger that appends every INSERT, UPDATE and DELETE to the
// change log, and a statement-level one for wake-ups (see SetNotify).
// entities maps a table to its entity type; the default is the table name
// without its schema. Watch migrates the schema first, picks up changed
// primary keys and entity types, and is idempotent. A table without a
// primary key is an error.
func Watch(ctx context.Context, pool *pgxpool.Pool, schema string, tables []string, entities map[string]string) error {
	if err := Migrate(ctx, pool, schema); err != nil {
		return err
	}
	q := ident(schema)
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("millrace migrate", schema)); err != nil {
			return err
		}
		for _, name := range tables {
			t, ok, err := resolve(ctx, tx, name)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("table %s does not exist", name)
			}
			if len(t.pk) == 0 {
				return fmt.Errorf("table %s has no primary key", name)
			}
			entity := entities[name]
			if entity == "" {
				entity = entities[t.nsp+"."+t.rel]
			}
			if entity == "" {
				entity = t.rel
			}
			args := []string{literal(entity)}
			for _, c := range t.pk {
				args = append(args, literal(c))
			}
			stmts := []string{
				fmt.Sprintf("CREATE OR REPLACE TRIGGER %s AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION %s.capture(%s)",
					ident(captureTrigger(schema)), t.name, q, strings.Join(args, ", ")),
				fmt.Sprintf("CREATE OR REPLACE TRIGGER %s AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s.notify()",
					ident(notifyTrigger(schema)), t.name, q),
			}
			for _, s := range stmts {
				if _, err := tx.Exec(ctx, s); err != nil {
					return fmt.Errorf("table %s: %w", name, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("capture: watch: %w", err)
	}
	return nil
}

// Unwatch removes the capture triggers from tables. Tables that do not
// exist, or are not watched, are left alone: Unwatch is idempotent.
func Unwatch(ctx context.Context, pool *pgxpool.Pool, schema string, tables []string) error {
	if err := checkSchema(schema); err != nil {
		return err
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for _, name := range tables {
			t, ok, err := resolve(ctx, tx, name)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			for _, trg := range []string{captureTrigger(schema), notifyTrigger(schema)} {
				if _, err := tx.Exec(ctx, fmt.Sprintf("DROP TRIGGER IF EXISTS %s ON %s", ident(trg), t.name)); err != nil {
					return fmt.Errorf("table %s: %w", name, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("capture: unwatch: %w", err)
	}
	return nil
}

// SetNotify turns the statement-level wake-ups of every watched table on
// or off: when on, each statement that changes a watched table sends one
// NOTIFY on Channel(schema) (PostgreSQL folds the identical ones of a
// transaction into one). Readers with Config.Notify listen for them; they
// poll either way. It migrates the schema first.
func SetNotify(ctx context.Context, pool *pgxpool.Pool, schema string, on bool) error {
	if err := Migrate(ctx, pool, schema); err != nil {
		return err
	}
	body := "BEGIN\n\tRETURN NULL;\nEND"
	if on {
		body = "BEGIN\n\tPERFORM pg_notify(" + literal(Channel(schema)) + ", '');\n\tRETURN NULL;\nEND"
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("millrace migrate", schema)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "CREATE OR REPLACE FUNCTION "+ident(schema)+".notify() RETURNS trigger LANGUAGE plpgsql AS $fn$\n"+body+"\n$fn$")
		return err
	})
	if err != nil {
		return fmt.Errorf("capture: set notify: %w", err)
	}
	return nil
}
