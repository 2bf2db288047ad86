package verify_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/internal/e2e"
	"github.com/millrace/millrace/internal/testenv"
)

func TestMain(m *testing.M) { e2e.Main(m) }

// TestVerifyShort runs the short form on every topology, and on nats
// with WAL capture: exit 0, and a table whose every scenario that ran
// shows 0 lost, 0 reordered and 0 duplicate effects (but for
// kill-worker and dedup-unreachable, where a SIGKILL between an effect
// and its record in the dedup ledger, or the ledger failing open, runs
// it again, under the same idempotency key);
// then nothing of the scratch is left in PostgreSQL, NATS or Redis.
func TestVerifyShort(t *testing.T) {
	bin := e2e.Binary(t)
	for _, run := range append(e2e.Topologies(), "nats"+e2e.WALRun) {
		t.Run(run, func(t *testing.T) {
			t.Parallel()
			cfg := exampleConfig(t, run)
			pg := testenv.PostgresURL()
			if _, capture := e2e.SplitRun(run); capture == "wal" {
				// A server of its own: logical decoding needs
				// wal_level = logical, whatever the shared server has.
				pg = testenv.StartPostgres(t, "wal_level=logical")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			stdout, stderr, code := verify(ctx, t, bin, pg, "verify", "--short", "-c", cfg)
			t.Logf("%s\n%s", stdout, stderr)
			if code != 0 {
				t.Errorf("millrace verify exited with %d, want 0", code)
			}
			rows := table(t, stdout)
			ran := 0
			for _, r := range rows {
				if strings.HasPrefix(r[6], "n/a") {
					continue
				}
				ran++
				// Duplicates are tolerated (WARN) only after a SIGKILL
				// and while the dedup store is cut off (it fails open),
				// under the first delivery's idempotency key.
				clean := r[3] == "0" && strings.HasPrefix(r[6], "ok") ||
					(r[0] == "kill-worker" || r[0] == "dedup-unreachable") && strings.HasPrefix(r[6], "WARN")
				if r[2] != "0" || r[4] != "0" || !clean {
					t.Errorf("scenario %s: lost %s, duplicate effects %s, reordered %s: %s", r[0], r[2], r[3], r[4], r[6])
				}
			}
			// baseline, kill-worker and endpoint-outage run everywhere.
			if len(rows) != 5 || ran < 3 {
				t.Errorf("%d scenarios in the table, %d ran; want 5, at least 3 run", len(rows), ran)
			}
			m := regexp.MustCompile(`scratch (millrace_verify_[0-9a-f]+)`).FindStringSubmatch(stderr)
			if m == nil {
				t.Fatal("verify did not name its scratch")
			}
			leftovers(ctx, t, pg, m[1])
		})
	}
}

// TestVerifyConfigError: a config whose source URL variable is not set,
// and an unknown scenario, are config errors (exit 2) naming the key or
// flag, found before anything is created.
func TestVerifyConfigError(t *testing.T) {
	bin := e2e.Binary(t)
	nats := filepath.Join(e2e.ModuleRoot(), "topologies", "nats.toml")
	for _, c := range []struct {
		name, want string
		env, args  []string
	}{
		{"unset source URL", "sources[0].postgres_url_env", []string{"ORDERS_DB_URL="}, nil},
		{"unknown scenario", "--scenarios", []string{"ORDERS_DB_URL=" + testenv.PostgresURL()}, []string{"--scenarios", "baseline,meteor"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, append([]string{"verify", "--short", "-c", nats}, c.args...)...)
			cmd.Env = append(os.Environ(), c.env...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("exit %v, want 2; stderr: %s", err, stderr.String())
			}
			if !strings.Contains(stderr.String(), c.want) {
				t.Errorf("the error does not name %s: %s", c.want, stderr.String())
			}
		})
	}
}

// TestVerifyCatchesReordering: two nats workers without partitions
// share one consumer, so an entity's changes 10 ms apart run on both at
// once; verify must report reordered deliveries and exit 1.
func TestVerifyCatchesReordering(t *testing.T) {
	bin := e2e.Binary(t)
	raw, err := os.ReadFile(filepath.Join(e2e.ModuleRoot(), "topologies", "nats.toml"))
	if err != nil {
		t.Fatal(err)
	}
	tree, err := toml.Parser().Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	tree["nats"].(map[string]any)["partitions"] = int64(0)
	out, err := toml.Parser().Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "nats.toml")
	if err := os.WriteFile(cfg, out, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	stdout, stderr, code := verify(ctx, t, bin, testenv.PostgresURL(), "verify", "--short", "--changes", "2000", "--scenarios", "baseline", "-c", cfg)
	t.Logf("%s\n%s", stdout, stderr)
	if code != 1 {
		t.Errorf("millrace verify exited with %d, want 1", code)
	}
	rows := table(t, stdout)
	if len(rows) != 1 || rows[0][4] == "0" || !strings.HasPrefix(rows[0][6], "FAIL") {
		t.Errorf("want one failed baseline row with reordered deliveries, got %v", rows)
	}
	if m := regexp.MustCompile(`scratch (millrace_verify_[0-9a-f]+)`).FindStringSubmatch(stderr); m != nil {
		leftovers(ctx, t, testenv.PostgresURL(), m[1])
	}
}

// exampleConfig returns the path of run's example config, pointed at the
// test services through the environment verify is given (see verify);
// with WAL capture, a copy whose sources capture with "wal".
func exampleConfig(t *testing.T, run string) string {
	topology, capture := e2e.SplitRun(run)
	path := filepath.Join(e2e.ModuleRoot(), "topologies", topology+".toml")
	if capture != "wal" {
		return path
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := toml.Parser().Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	srcs, _ := tree["sources"].([]any)
	for _, s := range srcs {
		s.(map[string]any)["capture"] = "wal"
	}
	out, err := toml.Parser().Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(t.TempDir(), topology+".toml")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// verify runs the binary with the example configs' variables set to the
// test services, PostgreSQL at pg.
func verify(ctx context.Context, t *testing.T, bin, pg string, args ...string) (stdout, stderr string, code int) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(),
		"ORDERS_DB_URL="+pg, "BILLING_DB_URL="+pg,
		"MILLRACE_NATS__URL="+testenv.NATSURL(), "MILLRACE_REDIS__URL="+testenv.RedisURL(),
		"MILLRACE_INGEST_TOKEN=verify-test")
	code, stdout, stderr = e2e.RunCommand(t, cmd)
	return stdout, stderr, code
}

// table returns the rows of the report's table, cells trimmed.
func table(t *testing.T, out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "| ") || strings.HasPrefix(line, "| scenario") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) != 7 {
			t.Fatalf("table row with %d cells: %s", len(cells), line)
		}
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows = append(rows, cells)
	}
	return rows
}

// leftovers fails the test when anything named after the scratch is left:
// a schema, a replication slot or publication, a stream, a Redis key.
func leftovers(ctx context.Context, t *testing.T, pg, name string) {
	pool, err := pgxpool.New(ctx, pg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var n int
	err = pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_namespace WHERE starts_with(nspname, $1))
		+ (SELECT count(*) FROM pg_replication_slots WHERE starts_with(slot_name, $1))
		+ (SELECT count(*) FROM pg_publication WHERE starts_with(pubname, $1))`, name).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	if n > 0 {
		t.Errorf("%d schemas, slots or publications named %s* left in PostgreSQL", n, name)
	}
	nc, err := nats.Connect(testenv.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	lister := js.StreamNames(ctx)
	for s := range lister.Name() {
		if l := strings.ToLower(s); strings.HasPrefix(l, name) || strings.HasPrefix(l, "kv_"+name) {
			t.Errorf("stream %s left in NATS", s)
		}
	}
	if err := lister.Err(); err != nil {
		t.Fatal(err)
	}
	opts, err := redis.ParseURL(testenv.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(opts)
	defer func() { _ = rc.Close() }()
	keys, _, err := rc.Scan(ctx, 0, name+":*", 1000).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) > 0 {
		t.Errorf("%d Redis keys %s:* left, e.g. %s", len(keys), name, keys[0])
	}
}
