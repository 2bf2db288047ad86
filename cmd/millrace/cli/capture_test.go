package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/embedded"
)

// captureCLI runs the command line with the embedded topology registered.
func captureCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	o := Options{Actions: handlers.NewRegistry(), Topologies: topologies.NewRegistry()}
	if err := embedded.Register(o.Topologies); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	root := newRoot(o, &out, &errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String() + errOut.String(), err
}

func TestMigrateWatchUnwatch(t *testing.T) {
	pool, schema := testenv.Postgres(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "CREATE TABLE orders (id int PRIMARY KEY, status text)"); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MILLRACE_TEST_ORDERS_DB", testenv.PostgresSchemaURL(t, schema))
	path := filepath.Join(t.TempDir(), "millrace.toml")
	toml := `
[[sources]]
name = "orders_db"
postgres_url_env = "MILLRACE_TEST_ORDERS_DB"
schema = "` + schema + `"
tables = ["` + schema + `.orders"]
entities = { "` + schema + `.orders" = "Order" }
`
	if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	changes := func() int {
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+schema+".change_log").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, args := range [][]string{
		{"migrate", "-c", path},
		{"migrate", "-c", path, "--source", "orders_db"},
		{"watch", "-c", path},
		{"watch", "-c", path},
	} {
		out, err := captureCLI(t, args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		if !strings.HasPrefix(out, "orders_db: ") {
			t.Errorf("%v printed %q", args, out)
		}
	}
	if _, err := pool.Exec(ctx, "INSERT INTO orders VALUES (1, 'new')"); err != nil {
		t.Fatal(err)
	}
	var entity string
	if err := pool.QueryRow(ctx, "SELECT entity_type FROM "+schema+".change_log").Scan(&entity); err != nil || entity != "Order" || changes() != 1 {
		t.Fatalf("after watch: %d changes, entity %q (%v); want 1 change of Order", changes(), entity, err)
	}
	for range 2 {
		if out, err := captureCLI(t, "unwatch", "-c", path, schema+".orders"); err != nil {
			t.Fatalf("unwatch: %v\n%s", err, out)
		}
	}
	if _, err := pool.Exec(ctx, "UPDATE orders SET status = 'paid'"); err != nil {
		t.Fatal(err)
	}
	if n := changes(); n != 1 {
		t.Errorf("after unwatch: %d changes, want 1", n)
	}
	if out, err := captureCLI(t, "watch", "-c", path, "--source", "nope"); err == nil || !strings.Contains(err.Error(), `no source named "nope"`) {
		t.Errorf("unknown source: %v\n%s", err, out)
	}
}
