package wal

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/bus/capture"
)

// Plugin is the output plugin of millrace's slots.
const Plugin = "pgoutput"

func ident(s string) string { return pgx.Identifier{s}.Sanitize() }

// CheckServer checks what WAL capture needs from the server and the role,
// before anything is created or read: wal_level = logical, and the
// REPLICATION attribute (or superuser). Each error names the fix.
func CheckServer(ctx context.Context, pool *pgxpool.Pool) error {
	var level, role string
	var repl bool
	err := pool.QueryRow(ctx, `SELECT current_setting('wal_level'), current_user,
		(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)`).Scan(&level, &role, &repl)
	if err != nil {
		return fmt.Errorf("wal: check the server: %w", err)
	}
	if err := checkWALLevel(level); err != nil {
		return err
	}
	if !repl {
		return fmt.Errorf("wal: role %s may not stream the write-ahead log: grant it with ALTER ROLE %s REPLICATION (or use capture = \"trigger\")", role, ident(role))
	}
	return nil
}

// ErrWALLevel is wrapped by the error of a server whose wal_level is not
// logical.
var ErrWALLevel = errors.New("wal_level is not logical")

func checkWALLevel(level string) error {
	if level != "logical" {
		return fmt.Errorf("wal: %w (it is %q): set it with ALTER SYSTEM SET wal_level = logical and restart PostgreSQL, or use capture = \"trigger\"", ErrWALLevel, level)
	}
	return nil
}

// Table is a watched table as the catalog knows it.
type Table struct {
	// Name is "schema.table", unquoted.
	Name string
	// Key are the primary-key columns, in key order; empty without one.
	Key []string
	// Full reports REPLICA IDENTITY FULL.
	Full bool
}

// lookupTable resolves name ("schema.table" or a name on the search
// path); ok is false when there is no such table.
func lookupTable(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, name string) (t Table, ok bool, err error) {
	var oid uint32
	var nsp, rel, ident string
	err = q.QueryRow(ctx, `
		SELECT c.oid, n.nspname, c.relname, c.relreplident::text
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')`, name).Scan(&oid, &nsp, &rel, &ident)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, false, nil
	}
	if err != nil {
		return t, false, fmt.Errorf("table %s: %w", name, err)
	}
	t.Name, t.Full = nsp+"."+rel, ident == "f"
	t.Key, err = capture.PrimaryKey(ctx, q, oid)
	if err != nil {
		return t, false, fmt.Errorf("table %s: primary key: %w", name, err)
	}
	return t, true, nil
}

// SetupConfig is what Setup creates.
type SetupConfig struct {
	// Slot and Publication are their names (plain identifiers).
	Slot, Publication string
	// Tables are the tables to publish, "schema.table".
	Tables []string
	// ReplicaIdentityFull sets REPLICA IDENTITY FULL on each table, so
	// that UPDATE carries the old row (changes) and DELETE the whole
	// before-image.
	ReplicaIdentityFull bool
}

// Setup prepares WAL capture of tables, as `millrace watch` does: it
// checks the server (CheckServer) and every table before it changes
// anything, then sets the replica identity, creates the publication (or
// adds the tables to it) and creates the slot with pgoutput. It is
// idempotent. A table without a primary key is refused unless its replica
// identity is FULL already; a slot of another plugin is refused.
func Setup(ctx context.Context, pool *pgxpool.Pool, c SetupConfig) error {
	if err := CheckServer(ctx, pool); err != nil {
		return err
	}
	var tables []Table
	for _, name := range c.Tables {
		t, ok, err := lookupTable(ctx, pool, name)
		if err != nil {
			return fmt.Errorf("wal: %w", err)
		}
		if !ok {
			return fmt.Errorf("wal: table %s does not exist", name)
		}
		if len(t.Key) == 0 && !t.Full {
			return fmt.Errorf("wal: table %s has no primary key: add one, or ALTER TABLE %s REPLICA IDENTITY FULL (its events then have an empty entity_id)", name, quoteTable(t.Name))
		}
		tables = append(tables, t)
	}
	if err := checkSlot(ctx, pool, c.Slot, false); err != nil {
		return err
	}
	for _, t := range tables {
		if c.ReplicaIdentityFull && !t.Full {
			if _, err := pool.Exec(ctx, "ALTER TABLE "+quoteTable(t.Name)+" REPLICA IDENTITY FULL"); err != nil {
				return fmt.Errorf("wal: table %s: set REPLICA IDENTITY FULL: %w%s", t.Name, err, ownerHint(err, t.Name))
			}
		}
	}
	if err := ensurePublication(ctx, pool, c.Publication, tables); err != nil {
		return err
	}
	return ensureSlot(ctx, pool, c.Slot)
}

// ownerHint adds the fix to a "must be owner" error.
func ownerHint(err error, table string) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42501" { // insufficient_privilege
		return fmt.Sprintf(" (the role that runs millrace must own %s: ALTER TABLE %s OWNER TO <that role>, or run watch as the owner)", table, quoteTable(table))
	}
	return ""
}

func quoteTable(name string) string {
	if i := strings.IndexByte(name, '.'); i > 0 {
		return ident(name[:i]) + "." + ident(name[i+1:])
	}
	return ident(name)
}

func ensurePublication(ctx context.Context, pool *pgxpool.Pool, pub string, tables []Table) error {
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)", pub).Scan(&exists); err != nil {
		return fmt.Errorf("wal: publication %s: %w", pub, err)
	}
	if !exists {
		// TRUNCATE is not published: the events have no type for it
		// (docs/capture.md).
		_, err := pool.Exec(ctx, "CREATE PUBLICATION "+ident(pub)+" WITH (publish = 'insert, update, delete')")
		var pe *pgconn.PgError
		if err != nil && !(errors.As(err, &pe) && pe.Code == "42710") { // duplicate_object: created meanwhile
			return fmt.Errorf("wal: create publication %s: %w", pub, err)
		}
	}
	for _, t := range tables {
		var in bool
		err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_publication_tables WHERE pubname = $1 AND schemaname || '.' || tablename = $2)",
			pub, t.Name).Scan(&in)
		if err != nil {
			return fmt.Errorf("wal: publication %s: %w", pub, err)
		}
		if in {
			continue
		}
		if _, err := pool.Exec(ctx, "ALTER PUBLICATION "+ident(pub)+" ADD TABLE "+quoteTable(t.Name)); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "42710" {
				continue
			}
			hint := ownerHint(err, t.Name)
			if hint == "" && errors.As(err, &pe) && pe.Code == "42501" {
				hint = fmt.Sprintf(" (the role must own publication %s and table %s)", pub, t.Name)
			}
			return fmt.Errorf("wal: add %s to publication %s: %w%s", t.Name, pub, err, hint)
		}
	}
	return nil
}

// ErrSlotPlugin is wrapped by the error of a slot that exists with
// another plugin than pgoutput.
var ErrSlotPlugin = errors.New("the slot exists with another plugin")

// checkSlot refuses a slot of another plugin or database; with required,
// also a missing slot.
func checkSlot(ctx context.Context, pool *pgxpool.Pool, slot string, required bool) error {
	var plugin, db, kind string
	var same bool
	err := pool.QueryRow(ctx, `SELECT coalesce(plugin, ''), coalesce(database, ''), slot_type, database = current_database()
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&plugin, &db, &kind, &same)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if required {
			return fmt.Errorf("wal: replication slot %s does not exist: run `millrace watch` (or set install = true)", slot)
		}
		return nil
	case err != nil:
		return fmt.Errorf("wal: replication slot %s: %w", slot, err)
	case kind != "logical" || plugin != Plugin:
		return fmt.Errorf("wal: replication slot %s: %w (%s %q, not %s): drop it with SELECT pg_drop_replication_slot('%s') if nothing else uses it, or set the source's slot to another name",
			slot, ErrSlotPlugin, kind, plugin, Plugin, slot)
	case !same:
		return fmt.Errorf("wal: replication slot %s belongs to database %s: set the source's slot to another name", slot, db)
	}
	return nil
}

func ensureSlot(ctx context.Context, pool *pgxpool.Pool, slot string) error {
	if err := checkSlot(ctx, pool, slot, false); err != nil {
		return err
	}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)", slot).Scan(&exists); err != nil {
		return fmt.Errorf("wal: replication slot %s: %w", slot, err)
	}
	if exists {
		return nil
	}
	// Creating a slot waits for the transactions running at that moment
	// to end; it must not run inside one that wrote.
	_, err := pool.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, $2)", slot, Plugin)
	var pe *pgconn.PgError
	if err != nil && errors.As(err, &pe) && pe.Code == "42710" { // created meanwhile
		return checkSlot(ctx, pool, slot, true)
	}
	if err != nil {
		return fmt.Errorf("wal: create replication slot %s: %w", slot, err)
	}
	return nil
}

// Check is what a capture process checks before it starts: the server
// (CheckServer), the slot (exists, pgoutput, this database) and the
// publication (exists). Each error names the fix.
func Check(ctx context.Context, pool *pgxpool.Pool, slot, publication string) error {
	if err := CheckServer(ctx, pool); err != nil {
		return err
	}
	if err := checkSlot(ctx, pool, slot, true); err != nil {
		return err
	}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)", publication).Scan(&exists); err != nil {
		return fmt.Errorf("wal: publication %s: %w", publication, err)
	}
	if !exists {
		return fmt.Errorf("wal: publication %s does not exist: run `millrace watch` (or set install = true)", publication)
	}
	return nil
}

// Unpublish removes tables from the publication; with every table gone
// (or tables empty) it drops the publication and the slot, which then no
// longer holds WAL back. A slot in use by a running capture is an error
// naming the process to stop first. It is idempotent.
func Unpublish(ctx context.Context, pool *pgxpool.Pool, slot, publication string, tables []string) error {
	for _, name := range tables {
		t, ok, err := lookupTable(ctx, pool, name)
		if err != nil {
			return fmt.Errorf("wal: %w", err)
		}
		if !ok {
			continue
		}
		var in bool
		if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_publication_tables WHERE pubname = $1 AND schemaname || '.' || tablename = $2)",
			publication, t.Name).Scan(&in); err != nil {
			return fmt.Errorf("wal: publication %s: %w", publication, err)
		}
		if in {
			if _, err := pool.Exec(ctx, "ALTER PUBLICATION "+ident(publication)+" DROP TABLE "+quoteTable(t.Name)); err != nil {
				return fmt.Errorf("wal: drop %s from publication %s: %w", t.Name, publication, err)
			}
		}
	}
	var left int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1", publication).Scan(&left); err != nil {
		return fmt.Errorf("wal: publication %s: %w", publication, err)
	}
	if left > 0 && len(tables) > 0 {
		return nil
	}
	return Drop(ctx, pool, slot, publication)
}

// Drop drops the slot and the publication if they exist.
func Drop(ctx context.Context, pool *pgxpool.Pool, slot, publication string) error {
	var pid *int32
	err := pool.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&pid)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return fmt.Errorf("wal: replication slot %s: %w", slot, err)
	case pid != nil:
		return fmt.Errorf("wal: replication slot %s is in use by the walsender of pid %d: stop the capture process first", slot, *pid)
	default:
		if _, err := pool.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot); err != nil {
			return fmt.Errorf("wal: drop replication slot %s: %w", slot, err)
		}
	}
	if _, err := pool.Exec(ctx, "DROP PUBLICATION IF EXISTS "+ident(publication)); err != nil {
		return fmt.Errorf("wal: drop publication %s: %w", publication, err)
	}
	return nil
}
