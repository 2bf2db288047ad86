package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/internal/testenv"
)

// TestRunRefusesOpenIngestBeyondLoopback: `millrace run` on an address
// other hosts can reach, with ingest on and no credentials, exits 2 and
// says how to fix it, before it opens anything.
func TestRunRefusesOpenIngestBeyondLoopback(t *testing.T) {
	path := filepath.Join(t.TempDir(), "open.toml")
	cfg := fmt.Sprintf("[http]\naddr = \"0.0.0.0:%d\"\n[embedded]\ndata_dir = %q\n", 18080, t.TempDir())
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLIWith(t, Defaults(), "run", "-c", path)
	if code != ExitInvalid {
		t.Fatalf("run: exit %d (%s); want %d", code, stderr, ExitInvalid)
	}
	for _, want := range []string{"http.ingest_tokens", "0.0.0.0:18080", "http.ingest = false"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("run's reason %q lacks %q", stderr, want)
		}
	}
}

// TestEmitSendsTheIngestToken: emit sends the token of
// $MILLRACE_INGEST_TOKEN (or of --token-env's variable); without it a
// millrace with ingest credentials refuses the event.
func TestEmitSendsTheIngestToken(t *testing.T) {
	t.Setenv("MILLRACE_TEST_EMIT_TOKEN", "emit-token-9d1")
	addr, _ := startMillrace(t, fmt.Sprintf(`
[http]
addr = "127.0.0.1:0"
ingest_tokens = [{ name = "cli", token_env = "MILLRACE_TEST_EMIT_TOKEN" }]
[embedded]
data_dir = %q
[router]
shutdown_timeout = "5s"
`, t.TempDir()))
	args := []string{"emit", "--addr", addr, "--entity", "Order", "--entity-id", "1"}
	t.Setenv(DefaultIngestTokenEnv, "")
	if code, out, _ := runCLI(t, args...); code != ExitFailure || !strings.Contains(out, "401") {
		t.Errorf("emit without a token: exit %d %s; want %d and a 401", code, out, ExitFailure)
	}
	if code, out, _ := runCLI(t, append(args, "--token-env", "MILLRACE_TEST_EMIT_TOKEN")...); code != ExitOK || !strings.Contains(out, "202") {
		t.Errorf("emit --token-env: exit %d %s; want 0 and a 202", code, out)
	}
	t.Setenv(DefaultIngestTokenEnv, "emit-token-9d1")
	if code, out, _ := runCLI(t, args...); code != ExitOK || !strings.Contains(out, "202") {
		t.Errorf("emit with $%s: exit %d %s; want 0 and a 202", DefaultIngestTokenEnv, code, out)
	}
}

// TestConfigStack: `millrace config --stack` prints each observer's
// delivery layers, outermost first, as the config sets them up.
func TestConfigStack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stack.toml")
	cfg := `
[cache]
enabled = false
[observers.shipped]
condition = "data.status == 'shipped'"
on_failure = "log"
retry = { max_attempts = 5, backoff = "linear", initial = "200ms", max = "10s" }
actions = [{ type = "log" }]
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runCLIWith(t, Defaults(), "config", "-c", path, "--stack")
	if code != ExitOK {
		t.Fatalf("config --stack: exit %d %s", code, stderr)
	}
	want := []string{
		"observers.shipped",
		"1. failure policy  log:",
		"2. condition       data.status == 'shipped'",
		"3. ledger          dedup window 5m0s",
		"4. retry           linear, 5 attempts, 200ms..10s",
		"5. actions         1 action(s), 4 at a time, each: circuit breaker (per endpoint: opens after 5 failures in a row, for 1s doubling to 30s)" +
			" → delivery limit (per endpoint: at most 64 at once, adaptive) → timeout 30s",
	}
	last := -1
	for _, w := range want {
		i := strings.Index(out, w)
		if i <= last {
			t.Errorf("config --stack output lacks %q after the previous line:\n%s", w, out)
		}
		last = i
	}
	if strings.Contains(out, "result cache") {
		t.Errorf("the stack shows a result cache that cache.enabled = false turned off:\n%s", out)
	}
}

// running is a `millrace run` started in the process by startRun.
type running struct {
	addrFile string
	stderr   *testenv.LogBuffer
	cancel   context.CancelFunc
	done     chan error
}

// startRun runs `millrace run -c <cfg> --addr-file F args...` until the
// test stops it, and waits until ready(r) holds (at most 20s).
func startRun(t *testing.T, cfg string, ready func(*running) bool, args ...string) *running {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "run.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	r := &running{addrFile: filepath.Join(dir, "addr"), stderr: &testenv.LogBuffer{}, cancel: cancel, done: make(chan error, 1)}
	t.Cleanup(cancel)
	root := newRoot(Defaults(), io.Discard, r.stderr)
	root.SetArgs(append([]string{"run", "-c", path, "--log-format", "text", "--addr-file", r.addrFile}, args...))
	go func() { r.done <- root.ExecuteContext(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for !ready(r) {
		select {
		case err := <-r.done:
			t.Fatalf("run ended before it was ready: %v\n%s", err, r.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("run not ready within 20s:\n%s", r.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r
}

// addr is what the address file holds, "" before it is written.
func (r *running) addr() string {
	b, err := os.ReadFile(r.addrFile)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// stop cancels the run, as SIGTERM does, and returns its exit code.
func (r *running) stop(t *testing.T) int {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		var ee *exitError
		switch {
		case err == nil:
			return ExitOK
		case errors.As(err, &ee):
			return ee.code
		}
		return ExitFailure
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop within 20s of the cancel")
		return 0
	}
}

// TestRunAddrFile: with http.addr on port 0, `millrace run --addr-file`
// writes the address it listens on, logs it, serves /healthz there, and
// removes the file at exit.
func TestRunAddrFile(t *testing.T) {
	cfg := fmt.Sprintf("[http]\naddr = \"127.0.0.1:0\"\n[embedded]\ndata_dir = %q\n[router]\nshutdown_timeout = \"5s\"\n", t.TempDir())
	r := startRun(t, cfg, func(r *running) bool { return r.addr() != "" })
	addr := r.addr()
	if host, port, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("address file holds %q, want 127.0.0.1 and the chosen port", addr)
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz at the written address: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz = %d", resp.StatusCode)
	}
	if code := r.stop(t); code != ExitOK {
		t.Errorf("run after the stop: exit %d, want 0\n%s", code, r.stderr.String())
	}
	if _, err := os.Stat(r.addrFile); !os.IsNotExist(err) {
		t.Errorf("address file left behind at exit (stat: %v)", err)
	}
	if log := r.stderr.String(); !strings.Contains(log, "http listening") || !strings.Contains(log, addr) {
		t.Errorf("the log does not give the listening address %s:\n%s", addr, log)
	}
}

// TestRunStopsCleanlyWhileWaiting: a stop (SIGTERM, Ctrl-C) while
// millrace waits for a service at start-up is a clean exit, not a failed
// start.
func TestRunStopsCleanlyWhileWaiting(t *testing.T) {
	cfg := "topology = \"nats\"\n[http]\naddr = \"127.0.0.1:0\"\n[nats]\nurl = \"nats://127.0.0.1:1\"\n[router]\nstartup_timeout = \"1m\"\n"
	r := startRun(t, cfg, func(r *running) bool {
		return r.addr() != "" && strings.Contains(r.stderr.String(), "waiting for a service")
	})
	if code := r.stop(t); code != ExitOK {
		t.Errorf("run stopped while waiting: exit %d, want 0\n%s", code, r.stderr.String())
	}
	if !strings.Contains(r.stderr.String(), "stopped before the backend was ready") {
		t.Errorf("the log does not say millrace stopped before it was ready:\n%s", r.stderr.String())
	}
}

// TestRunObserveNeedsNoSourceURL: an observe-only process on the nats
// topology never opens the sources, so it starts without their URL
// variables; on the postgres topology, whose bus is the sources' change
// logs, it refuses to start without them.
func TestRunObserveNeedsNoSourceURL(t *testing.T) {
	_, _, prefix := testenv.NATS(t) // deletes the test's streams at the end
	stream := strings.ToUpper(prefix) + "_EVENTS"
	cfg := fmt.Sprintf(`topology = "nats"
role = "observe"
[http]
addr = "127.0.0.1:0"
[nats]
url = %q
stream = %q
subject_prefix = %q
[[sources]]
name = "orders_db"
postgres_url_env = "MILLRACE_TEST_UNSET_ORDERS_URL"
tables = ["public.orders"]
[router]
shutdown_timeout = "5s"
`, testenv.NATSURL(), stream, prefix)
	r := startRun(t, cfg, func(r *running) bool { return strings.Contains(r.stderr.String(), "millrace running") })
	if code := r.stop(t); code != ExitOK {
		t.Errorf("observe role on nats: exit %d, want 0\n%s", code, r.stderr.String())
	}

	pg := filepath.Join(t.TempDir(), "pg.toml")
	if err := os.WriteFile(pg, []byte("topology = \"postgres\"\nrole = \"observe\"\n[[sources]]\nname = \"orders_db\"\npostgres_url_env = \"MILLRACE_TEST_UNSET_ORDERS_URL\"\ntables = [\"public.orders\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLIWith(t, Defaults(), "run", "-c", pg)
	if code != ExitInvalid || !strings.Contains(stderr, "sources[0].postgres_url_env") {
		t.Errorf("observe role on postgres without the source's URL: exit %d %s; want %d naming sources[0].postgres_url_env", code, stderr, ExitInvalid)
	}
}
