package badinput_test

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/millrace/millrace/internal/e2e"
	"github.com/millrace/millrace/internal/testenv"
)

// TestWALLevelNotLogical points a source with capture = "wal" at a
// PostgreSQL of its own started with wal_level = replica: `millrace
// watch` and `millrace run` both refuse, exit with an error naming
// wal_level and the fix (ALTER SYSTEM SET wal_level = logical, or
// capture = "trigger"), and leave nothing behind: no publication, no
// slot, no change-log schema on the server, no stream on the bus.
func TestWALLevelNotLogical(t *testing.T) {
	t.Parallel()
	server := testenv.StartPostgres(t, "wal_level=replica")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil || level != "replica" {
		t.Fatalf("the throw-away server's wal_level is %q (%v); want replica", level, err)
	}

	r := e2e.NewRig(t, "nats"+e2e.WALRun, e2e.Options{})
	src := r.Sources[0]
	// The watched table exists on the throw-away server as on the shared
	// one, so that wal_level is the only thing wrong.
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{src.Schema}.Sanitize()+
		"; CREATE TABLE "+pgx.Identifier{src.Schema, "orders"}.Sanitize()+" (id int PRIMARY KEY, status text, n int)"); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(server)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", src.Schema)
	u.RawQuery = q.Encode()
	env := r.Env
	replaced := false
	for i, kv := range env {
		if name, v, _ := strings.Cut(kv, "="); v == src.URL {
			env[i], replaced = name+"="+u.String(), true
		}
	}
	if !replaced {
		t.Fatalf("the rig's environment does not hold the source's URL %s", src.URL)
	}

	for _, cmd := range []string{"watch", "run"} {
		t.Run(cmd, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			c := exec.CommandContext(ctx, e2e.Binary(t), cmd, "-c", r.Config)
			c.Env = env
			var out bytes.Buffer
			c.Stdout, c.Stderr = &out, &out
			start := time.Now()
			err := c.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ctx.Err() != nil {
				t.Fatalf("millrace %s: %v after %s; want it to exit with an error at once\n%s", cmd, err, time.Since(start).Round(time.Millisecond), out.String())
			}
			// The other way out, capture = "trigger", is quoted as JSON in a
			// log line: look for the word.
			for _, want := range []string{"wal_level", "ALTER SYSTEM SET wal_level = logical", "trigger"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("millrace %s exited with %d, its output does not name %q:\n%s", cmd, ee.ExitCode(), want, out.String())
				}
			}
			if !strings.Contains(out.String(), src.Name) {
				t.Errorf("millrace %s: its error does not name the source %s:\n%s", cmd, src.Name, out.String())
			}
			var pubs, slots, schemas int
			if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_publication), (SELECT count(*) FROM pg_replication_slots),
				(SELECT count(*) FROM pg_namespace WHERE nspname NOT LIKE 'pg\_%' AND nspname NOT IN ('public', 'information_schema', $1))`,
				src.Schema).Scan(&pubs, &slots, &schemas); err != nil {
				t.Fatal(err)
			}
			if pubs+slots+schemas != 0 {
				t.Errorf("millrace %s left %d publications, %d slots and %d schemas on the server it refused", cmd, pubs, slots, schemas)
			}
			var tables int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = $1", src.Schema).Scan(&tables); err != nil {
				t.Fatal(err)
			}
			if tables != 1 {
				t.Errorf("millrace %s left %d tables in the watched schema; want the watched table alone", cmd, tables)
			}
			if cmd == "run" {
				// The source is the one that refused, before the bus was
				// touched: no stream was provisioned.
				if _, err := r.JS.Stream(ctx, r.Stream); !errors.Is(err, jetstream.ErrStreamNotFound) {
					t.Errorf("millrace run: stream %s: %v; want none from a process that refused to start", r.Stream, err)
				}
			}
		})
	}
}
