package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
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
		"5. actions         1 action(s), 4 at a time, each: circuit breaker (per endpoint) → timeout 30s",
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

// TestRunAddrFile: with http.addr on port 0, `millrace run --addr-file`
// writes the address it listens on, logs it, serves /healthz there, and
// removes the file at exit.
func TestRunAddrFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run.toml")
	cfg := fmt.Sprintf("[http]\naddr = \"127.0.0.1:0\"\n[embedded]\ndata_dir = %q\n[router]\nshutdown_timeout = \"5s\"\n", dir)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	addrFile := filepath.Join(dir, "addr")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stderr lockedBuffer
	root := newRoot(Defaults(), io.Discard, &stderr)
	root.SetArgs([]string{"run", "-c", path, "--log-format", "text", "--addr-file", addrFile})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()

	var addr string
	deadline := time.Now().Add(20 * time.Second)
	for addr == "" {
		if b, err := os.ReadFile(addrFile); err == nil {
			addr = strings.TrimSpace(string(b))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not written within 20s", addrFile)
		}
		time.Sleep(20 * time.Millisecond)
	}
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
	cancel()
	select {
	case err := <-done:
		if err != nil {
			var ee *exitError
			if errors.As(err, &ee) {
				t.Errorf("run after cancel: exit %d\n%s", ee.code, stderr.String())
			} else {
				t.Errorf("run after cancel: %v", err)
			}
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop within 20s of the cancel")
	}
	if _, err := os.Stat(addrFile); !os.IsNotExist(err) {
		t.Errorf("address file left behind at exit (stat: %v)", err)
	}
	if !strings.Contains(stderr.String(), "http listening") || !strings.Contains(stderr.String(), addr) {
		t.Errorf("the log does not give the listening address %s:\n%s", addr, stderr.String())
	}
}

// TestRunStopsCleanlyWhileWaiting: a stop (SIGTERM, Ctrl-C) while
// millrace waits for a service at start-up is a clean exit, not a failed
// start.
func TestRunStopsCleanlyWhileWaiting(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "wait.toml")
	cfg := "topology = \"nats\"\n[http]\naddr = \"127.0.0.1:0\"\n[nats]\nurl = \"nats://127.0.0.1:1\"\n[router]\nstartup_timeout = \"1m\"\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	addrFile := filepath.Join(dir, "addr")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stderr lockedBuffer
	root := newRoot(Defaults(), io.Discard, &stderr)
	root.SetArgs([]string{"run", "-c", path, "--log-format", "text", "--addr-file", addrFile})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(addrFile); err == nil && strings.Contains(stderr.String(), "waiting for a service") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("millrace did not start waiting for NATS within 20s:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run stopped while waiting: %v, want a clean exit\n%s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop within 20s of the cancel")
	}
	if !strings.Contains(stderr.String(), "stopped before the backend was ready") {
		t.Errorf("the log does not say millrace stopped before it was ready:\n%s", stderr.String())
	}
}

// lockedBuffer is a bytes.Buffer that a running command writes its log to
// while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
