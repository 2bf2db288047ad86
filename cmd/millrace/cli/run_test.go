package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
