package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, toml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "millrace.toml")
	if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// A webhook URL with its token in the query string, and a Redis URL with
// a password, print masked; the rest of the URLs stays as written.
func TestConfigMasksURLCredentials(t *testing.T) {
	path := writeConfig(t, `
topology = "embedded"
[redis]
url = "redis://:hunter2@127.0.0.1:6379/0"
[observers.o]
[[observers.o.actions]]
type = "webhook"
url = "https://hooks.example.com/in?team=ops&token=s3cr3t-t0ken&Signature=abc123"
`)
	code, out, stderr := runCLI(t, "config", "-c", path)
	if code != ExitOK {
		t.Fatalf("millrace config: exit %d\n%s", code, stderr)
	}
	for _, secret := range []string{"s3cr3t-t0ken", "abc123", "hunter2"} {
		if strings.Contains(out, secret) {
			t.Errorf("millrace config prints %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{
		"https://hooks.example.com/in?team=ops&token=REDACTED&Signature=REDACTED",
		"redis://:REDACTED@127.0.0.1:6379/0",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("millrace config lacks %q:\n%s", want, out)
		}
	}
}

// With --wait=false a service that does not answer fails the start at
// once, with status 2 and the key and address in the message.
func TestRunWithoutWait(t *testing.T) {
	path := writeConfig(t, `
topology = "nats"
[http]
addr = "127.0.0.1:0"
[nats]
url = "nats://127.0.0.1:1"
[router]
startup_timeout = "1m"
`)
	start := time.Now()
	code, stdout, stderr := runCLI(t, "run", "--wait=false", "--log-format", "text", "-c", path)
	out := stdout + stderr
	if code != ExitInvalid {
		t.Errorf("exit %d, want %d\n%s", code, ExitInvalid, out)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("took %s: it waited for NATS", took)
	}
	for _, want := range []string{"nats: connect nats://127.0.0.1:1 (nats.url)", "connection refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
