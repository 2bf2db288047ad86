package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/millrace/millrace/internal/testenv"
)

// backfillConfig writes a postgres-topology config with one source over
// a schema of the test's own, holding a watched table orders with 30
// rows, an unwatched table and a table without primary key.
func backfillConfig(t *testing.T) (path, schema string, count func(op, observer string) int) {
	t.Helper()
	pool, schema := testenv.Postgres(t)
	ctx := context.Background()
	for _, q := range []string{
		"CREATE TABLE orders (id int PRIMARY KEY, status text)",
		"INSERT INTO orders SELECT x, 'new' FROM generate_series(1, 30) x",
		"CREATE TABLE other (id int PRIMARY KEY)",
		"CREATE TABLE nokey (id int)",
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("MILLRACE_TEST_BACKFILL_DB", testenv.PostgresSchemaURL(t, schema))
	path = filepath.Join(t.TempDir(), "millrace.toml")
	toml := `topology = "postgres"

[[sources]]
name = "orders_db"
postgres_url_env = "MILLRACE_TEST_BACKFILL_DB"
schema = "` + schema + `"
tables = ["` + schema + `.orders", "` + schema + `.nokey"]
entities = { "` + schema + `.orders" = "Order" }

[observers.audit]
event = "READ"
entity = "Order"
[[observers.audit.actions]]
type = "log"
`
	if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := backfillCLI(t, "watch", "-c", path, schema+".orders"); err != nil {
		t.Fatalf("watch: %v\n%s", err, out)
	}
	count = func(op, observer string) int {
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+schema+".change_log WHERE op = $1 AND coalesce(metadata->>'millrace_observer', '') = $2",
			op, observer).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	return path, schema, count
}

func backfillCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRoot(Defaults(), &out, &errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestBackfillCommand(t *testing.T) {
	path, schema, count := backfillConfig(t)
	out, err := backfillCLI(t, "backfill", "-c", path, "--table", schema+".orders", "--page", "7", "--observer", "audit")
	if err != nil {
		t.Fatalf("backfill: %v\n%s", err, out)
	}
	if want := "orders_db: " + schema + ".orders: 30 rows emitted as READ events in "; !strings.HasPrefix(out, want) {
		t.Errorf("printed %q; want it to start with %q", out, want)
	}
	if n := count("READ", "audit"); n != 30 {
		t.Errorf("%d READ rows for observer audit in the change log, want 30", n)
	}
	out, err = backfillCLI(t, "backfill", "-c", path, "--table", schema+".orders", "--observer", "audit")
	if err != nil || !strings.Contains(out, "the backfill finished at ") || !strings.Contains(out, "with 30 rows; --restart runs it again") {
		t.Errorf("second run: %v, printed %q; want the finished backfill reported", err, out)
	}
	if out, err = backfillCLI(t, "backfill", "-c", path, "--table", schema+".orders", "--where", "id <= 10"); err != nil {
		t.Fatalf("backfill --where: %v\n%s", err, out)
	}
	if n := count("READ", ""); n != 10 {
		t.Errorf("%d READ rows for every observer after --where 'id <= 10', want 10", n)
	}
}

func TestBackfillBadInput(t *testing.T) {
	path, schema, _ := backfillConfig(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown source", []string{"--source", "nope", "--table", schema + ".orders"}, `no source named "nope" (sources: orders_db)`},
		{"no table", nil, "--table is required"},
		{"missing table", []string{"--table", schema + ".gone"}, "sources[0] (orders_db): invalid backfill: table " + schema + ".gone does not exist"},
		{"not watched by the source", []string{"--table", schema + ".other"},
			"sources[0] (orders_db): invalid backfill: table " + schema + ".other is not one of the source's tables (" + schema + ".orders, " + schema + ".nokey)"},
		{"no primary key", []string{"--table", schema + ".nokey"}, "table " + schema + ".nokey has no primary key"},
		{"unknown observer", []string{"--table", schema + ".orders", "--observer", "nobody"}, `--observer "nobody": no observer of that name (observers: audit)`},
		{"bad rate", []string{"--table", schema + ".orders", "--rate", "fast"}, `--rate: "fast" must be a positive number per s, m or h, like "50/s"`},
		{"bad page", []string{"--table", schema + ".orders", "--page", "0"}, "--page 0: must be at least 1"},
		{"bad where", []string{"--table", schema + ".orders", "--where", "id = 'x'"}, `--where "id = 'x'" on table ` + schema + `.orders: invalid input syntax for type integer: "x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := backfillCLI(t, append([]string{"backfill", "-c", path}, tc.args...)...)
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != ExitInvalid || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v (printed %q); want exit %d with %q", err, out, ExitInvalid, tc.want)
			}
		})
	}
}
