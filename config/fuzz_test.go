package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/millrace/millrace/config"
)

// FuzzParse feeds arbitrary TOML and one arbitrary environment entry to
// the loader. It must never panic; a refusal is made only of
// *config.Error values, each with a key path or a TOML parse message; an
// accepted config validates and prints.
func FuzzParse(f *testing.F) {
	examples, _ := filepath.Glob(filepath.Join("..", "topologies", "*.toml"))
	for _, p := range examples {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b, "MILLRACE_HTTP__ADDR", "127.0.0.1:9999")
		}
	}
	for _, s := range []struct{ toml, key, value string }{
		{"", "", ""},
		{`topology = "embedded"`, "MILLRACE_TOPOLOGY", "nats"},
		{`topology = "nats"` + "\n[nats]\nurl = \"nats://x:4222\"\nstream = \"S\"", "MILLRACE_NATS__MAX_DELIVER", "-1"},
		{"[observers.a]\nevent = \"UPDATE\"\ncondition = \"data.x > 1\"\n[[observers.a.actions]]\ntype = \"log\"", "MILLRACE_OBSERVERS__A__RETRY__MAX_ATTEMPTS", "7"},
		{"[[sources]]\nname = \"db\"\npostgres_url_env = \"DB_URL\"\ntables = [\"public.t\"]", "MILLRACE_SOURCES", "x"},
		{"[dedup]\nwindow = 5", "MILLRACE_DEDUP__WINDOW", "banana"},
		{"[http]\naddr = [1, 2]\nmax_body_bytes = 1e30", "MILLRACE_HTTP__MAX_BODY_BYTES", "9223372036854775808"},
		{"[router]\nmax_in_flight = -3\n[cache]\nttl = \"-1s\"", "MILLRACE_NO_SUCH__KEY", "1"},
		{"topology = \"embedded\"\n[observers.\"b c\"]\nentity = \"\"", "MILLRACE_REDIS__URL", "redis://:pw@h:6379/0"},
		{"[[observers]]\nx = 1", "MILLRACE_LOG", "{}"},
		{"a = {b = {c = [{d = 1}]}}", "MILLRACE_A__B__C", "1"},
		{"[embedded\nport = ", "MILLRACE_EMBEDDED__PORT", "70000"},
	} {
		f.Add([]byte(s.toml), s.key, s.value)
	}
	f.Fuzz(func(t *testing.T, data []byte, key, value string) {
		cfg, err := config.Parse(data, []string{key + "=" + value})
		if err != nil {
			for _, e := range config.Errors(err) {
				var ce *config.Error
				if !errors.As(e, &ce) {
					t.Fatalf("error %q (%T) is not a *config.Error", e, e)
				}
				if ce.Path == "" && !strings.HasPrefix(ce.Msg, "parse TOML: ") {
					t.Fatalf("error %q has no key path and is not a TOML parse error", e)
				}
			}
			return
		}
		if cfg == nil {
			t.Fatal("Parse returned neither a config nor an error")
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that Validate refuses: %v", err)
		}
		if _, err := cfg.TOML(); err != nil {
			t.Fatalf("an accepted config does not print: %v", err)
		}
	})
}
