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
