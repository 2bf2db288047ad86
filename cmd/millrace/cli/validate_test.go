package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestValidateCrossSection: `millrace validate` finds what an action
// needs of the rest of the config and of the topology, which used to
// pass validation and fail (or, for publish on the postgres topology,
// go wrong silently) at run time. Each broken file exits 2 naming the
// key path; the same file, fixed, is valid.
func TestValidateCrossSection(t *testing.T) {
	for _, tt := range []struct {
		name         string
		broken, want string
		fixed        string
	}{
		{
			name: "email without smtp",
			broken: `
[[observers.o.actions]]
type = "email"
to = ["ops@example.com"]
body = "{{ .entity_id }}"
`,
			want: "observers.o.actions[0]: smtp.host is not set: the email action needs an [smtp] section with host and from",
			fixed: `
[smtp]
host = "mail.example.com"
from = "millrace@example.com"
`,
		},
		{
			name: "publish on the postgres topology",
			broken: `
topology = "postgres"
[postgres]
url = "postgres://127.0.0.1/app"

[[observers.o.actions]]
type = "publish"
topic = "orders_shipped"
`,
			want: `observers.o.actions[0].topic: the postgres topology's bus has no topics besides router.topic ("events"): ` +
				`a message for "orders_shipped" would land among the events`,
			// A new event on router.topic is what the change log carries.
			fixed: `
[[observers.o.actions]]
type = "publish"
topic = "events"
body = '{"id": "{{ .id }}-shipped", "event_type": "CUSTOM", "entity_type": "Shipment", "entity_id": "{{ .entity_id }}"}'
`,
		},
		{
			name: "sql on an unknown database",
			broken: `
[databases.main]
url = "postgres://127.0.0.1/app"

[[observers.o.actions]]
type = "sql"
database = "reports"
function = "on_order"
`,
			want: "observers.o.actions[0].database: databases.reports is not configured: add a [databases.reports] section with url or url_env (configured: main)",
			fixed: `
[databases.reports]
url_env = "REPORTS_DB_URL"
`,
		},
		{
			name: "cache_invalidate without redis",
			broken: `
[[observers.o.actions]]
type = "cache_invalidate"
keys = ["order:{{ .entity_id }}"]
`,
			want: "observers.o.actions[0]: redis.url is not set: the cache_invalidate action needs a [redis] section with url or url_env",
			fixed: `
[redis]
url = "redis://127.0.0.1:6379/0"
`,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			broken := filepath.Join(dir, "broken.toml")
			if err := os.WriteFile(broken, []byte(tt.broken), 0o600); err != nil {
				t.Fatal(err)
			}
			code, _, stderr := runCLIWith(t, Defaults(), "validate", broken)
			if code != ExitInvalid || !strings.Contains(stderr, broken+": 1 problem(s):") || !strings.Contains(stderr, "\n  "+tt.want) {
				t.Errorf("validate %s: exit %d\n%s\nwant exit %d and one problem:\n%s", tt.name, code, stderr, ExitInvalid, tt.want)
			}
			fixed := filepath.Join(dir, "fixed.toml")
			text := tt.broken + tt.fixed
			if strings.Contains(tt.fixed, "[[observers.o.actions]]") {
				// The fix replaces the action.
				text = tt.broken[:strings.Index(tt.broken, "[[observers.o.actions]]")] + tt.fixed
			}
			if err := os.WriteFile(fixed, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			if code, stdout, stderr := runCLIWith(t, Defaults(), "validate", fixed); code != ExitOK {
				t.Errorf("validate of the fixed file: exit %d %s%s; want 0", code, stdout, stderr)
			}
		})
	}
}

// TestValidateEmbeddedSync: embedded.sync is "always" or an interval;
// anything else exits 2 naming the key.
func TestValidateEmbeddedSync(t *testing.T) {
	for _, tt := range []struct {
		sync, want string
	}{
		{"always", ""},
		{"2m", ""},
		{"bogus", `embedded.sync: "bogus" is not "always" or a duration such as "2m"`},
	} {
		path := filepath.Join(t.TempDir(), "millrace.toml")
		if err := os.WriteFile(path, []byte("[embedded]\nsync = \""+tt.sync+"\"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		code, stdout, stderr := runCLIWith(t, Defaults(), "validate", path)
		switch {
		case tt.want == "" && code != ExitOK:
			t.Errorf("validate embedded.sync = %q: exit %d %s%s; want 0", tt.sync, code, stdout, stderr)
		case tt.want != "" && (code != ExitInvalid || !strings.Contains(stderr, "\n  "+tt.want)):
			t.Errorf("validate embedded.sync = %q: exit %d\n%s\nwant exit %d and:\n%s", tt.sync, code, stderr, ExitInvalid, tt.want)
		}
	}
}

// TestValidateNotesNATSSync: on the nats topology with one replica,
// validate passes but notes that a host crash may lose what the server
// has not synced, naming nats.replicas; with three replicas, and on the
// embedded topology (which sets its server's sync itself), no note.
func TestValidateNotesNATSSync(t *testing.T) {
	for _, tt := range []struct {
		config string
		note   bool
	}{
		{"topology = \"nats\"\n", true},
		{"topology = \"nats\"\n[nats]\nreplicas = 3\n", false},
		{"topology = \"embedded\"\n", false},
	} {
		path := filepath.Join(t.TempDir(), "millrace.toml")
		if err := os.WriteFile(path, []byte(tt.config), 0o600); err != nil {
			t.Fatal(err)
		}
		code, stdout, stderr := runCLIWith(t, Defaults(), "validate", path)
		if code != ExitOK {
			t.Fatalf("validate %q: exit %d %s%s; want 0", tt.config, code, stdout, stderr)
		}
		want := path + ": note: nats.replicas: 1: millrace's streams live on one NATS server"
		if got := strings.Contains(stdout, want) && strings.Contains(stdout, "sync_interval: always"); got != tt.note {
			t.Errorf("validate %q printed:\n%s\nwant the sync note: %v", tt.config, stdout, tt.note)
		}
	}
}

// TestValidatePublishOnTopics: publish to a topic of its own is valid on
// every topology whose bus has topics.
func TestValidatePublishOnTopics(t *testing.T) {
	for _, top := range []string{"embedded", "nats", "redis"} {
		path := filepath.Join(t.TempDir(), top+".toml")
		text := "topology = \"" + top + "\"\n[redis]\nurl = \"redis://127.0.0.1:6379/0\"\n" +
			"[[observers.o.actions]]\ntype = \"publish\"\ntopic = \"orders_shipped\"\n"
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if code, stdout, stderr := runCLIWith(t, Defaults(), "validate", path); code != ExitOK {
			t.Errorf("validate publish on %s: exit %d %s%s; want 0", top, code, stdout, stderr)
		}
	}
}

// TestValidateReportsTopologyProblemsWithTheRest: a file with problems
// of its own and of its topology's sections lists both at once, as
// config/ did when it held the topologies' checks.
func TestValidateReportsTopologyProblemsWithTheRest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "both.toml")
	if err := os.WriteFile(path, []byte("topology = \"nats\"\nrole = \"both\"\n[nats]\nreplicas = 9\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLIWith(t, Defaults(), "validate", path)
	if code != ExitInvalid || !strings.Contains(stderr, "2 problem(s)") || !strings.Contains(stderr, "role:") || !strings.Contains(stderr, "nats.replicas:") {
		t.Errorf("validate: exit %d\n%s\nwant exit %d with role and nats.replicas", code, stderr, ExitInvalid)
	}
	if err := os.WriteFile(path, []byte("topology = \"kafka\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCLIWith(t, Defaults(), "validate", path)
	if want := `topology: "kafka" is not one of embedded, multidb, nats, postgres, redis`; code != ExitInvalid || !strings.Contains(stderr, want) {
		t.Errorf("validate: exit %d\n%s\nwant exit %d and %s", code, stderr, ExitInvalid, want)
	}
}

// TestValidateNoop: the noop action is built in, and takes no keys.
func TestValidateNoop(t *testing.T) {
	dir := t.TempDir()
	ok := filepath.Join(dir, "noop.toml")
	if err := os.WriteFile(ok, []byte("[[observers.o.actions]]\ntype = \"noop\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, stdout, stderr := runCLIWith(t, Defaults(), "validate", ok); code != ExitOK {
		t.Errorf("validate noop: exit %d %s%s; want 0", code, stdout, stderr)
	}
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[[observers.o.actions]]\ntype = \"noop\"\nmessage = \"x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCLIWith(t, Defaults(), "validate", bad); code != ExitInvalid || !strings.Contains(stderr, "observers.o.actions[0].message") {
		t.Errorf("validate noop with a key: exit %d %s; want %d naming observers.o.actions[0].message", code, stderr, ExitInvalid)
	}
}
