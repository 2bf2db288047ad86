package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
)

const valid = `
topology = "embedded"

[http]
addr = "127.0.0.1:9090"

[dedup]
window = "2m"

[observers.order_shipped]
event = "UPDATE"
entity = "Order"
condition = "data.status == 'shipped'"
retry = { max_attempts = 5, backoff = "linear", initial = "200ms", max = "10s" }
on_failure = "log"

[[observers.order_shipped.actions]]
type = "webhook"
url = "https://hooks.example.com/shipped"
secret_env = "SHIPPED_SECRET"
`

func TestLoadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "millrace.toml")
	if err := os.WriteFile(path, []byte(valid), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.HTTP.Addr != "127.0.0.1:9090" {
		t.Errorf("http.addr = %q", cfg.HTTP.Addr)
	}
	if cfg.Dedup.Window.D() != 2*time.Minute {
		t.Errorf("dedup.window = %s", cfg.Dedup.Window)
	}
	if cfg.Cache.TTL.D() != time.Minute || !cfg.Cache.Enabled {
		t.Errorf("cache defaults not kept: %+v", cfg.Cache)
	}
	o := cfg.Observers["order_shipped"]
	if o.Retry.MaxAttempts != 5 || o.Retry.Backoff != "linear" || o.Retry.Initial.D() != 200*time.Millisecond {
		t.Errorf("retry = %+v", o.Retry)
	}
	if o.Retry.Jitter != 0.25 {
		t.Errorf("retry.jitter default lost: %v", o.Retry.Jitter)
	}
	if o.Concurrency != 4 || o.Timeout.D() != 30*time.Second {
		t.Errorf("observer defaults not applied: %+v", o)
	}
	if got := o.Actions[0].Type(); got != "webhook" {
		t.Errorf("action type = %q", got)
	}
	if got := o.Actions[0]["url"]; got != "https://hooks.example.com/shipped" {
		t.Errorf("action url = %v", got)
	}
}

func TestLoadMissingFile(t *testing.T) {
	if _, err := config.Load(filepath.Join(t.TempDir(), "nope.toml")); err == nil || !strings.Contains(err.Error(), "read config") {
		t.Fatalf("Load(missing) = %v; want a read error", err)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := config.Parse(nil, nil)
	if err != nil {
		t.Fatalf("empty config: %v", err)
	}
	if cfg.Topology != "embedded" || cfg.Role != "all" || cfg.Dedup.Window.D() != 5*time.Minute || cfg.HTTP.MaxBodyBytes != 1<<20 {
		t.Errorf("defaults = %+v", cfg)
	}
}

func TestEnvOverride(t *testing.T) {
	env := []string{
		"MILLRACE_DEDUP__WINDOW=30s",
		"MILLRACE_HTTP__MAX_BODY_BYTES=2048",
		"MILLRACE_CACHE__ENABLED=false",
		"MILLRACE_OBSERVERS__ORDER_SHIPPED__RETRY__MAX_ATTEMPTS=7",
		"MILLRACE_TOPOLOGY=embedded",
		"MILLRACE_ADMIN_TOKEN=secret", // a secret named by *_env, not a key
		"OTHER=1",
	}
	cfg, err := config.Parse([]byte(valid), env)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if cfg.Dedup.Window.D() != 30*time.Second {
		t.Errorf("dedup.window = %s; want 30s from the environment", cfg.Dedup.Window)
	}
	if cfg.HTTP.MaxBodyBytes != 2048 {
		t.Errorf("http.max_body_bytes = %d", cfg.HTTP.MaxBodyBytes)
	}
	if cfg.Cache.Enabled {
		t.Error("cache.enabled still true")
	}
	if n := cfg.Observers["order_shipped"].Retry.MaxAttempts; n != 7 {
		t.Errorf("retry.max_attempts = %d; want 7", n)
	}
	if cfg.Observers["order_shipped"].Retry.Backoff != "linear" {
		t.Error("env override of one retry key lost the file's other keys")
	}
}

// bus.driver defaults to millrace's buses, and MILLRACE_BUS__DRIVER
// picks the upstream ones, or names the key when its value is not one.
func TestBusDriver(t *testing.T) {
	cfg, err := config.Parse(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Bus.Driver != config.DriverMillrace {
		t.Errorf("default bus.driver = %q, want %q", cfg.Bus.Driver, config.DriverMillrace)
	}
	cfg, err = config.Parse(nil, []string{"MILLRACE_BUS__DRIVER=watermill"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Bus.Driver != config.DriverWatermill {
		t.Errorf("bus.driver = %q from MILLRACE_BUS__DRIVER, want %q", cfg.Bus.Driver, config.DriverWatermill)
	}
	_, err = config.Parse([]byte("[bus]\ndriver = \"sarama\"\n"), nil)
	if err == nil || !strings.HasPrefix(err.Error(), "bus.driver: ") {
		t.Errorf("bus.driver = sarama: %v, want an error naming bus.driver", err)
	}
}

func TestUnknownKeys(t *testing.T) {
	tests := []struct {
		name, toml string
		env        []string
		path, want string
	}{
		{"top level", `topolgy = "embedded"`, nil, "topolgy", `did you mean "topology"`},
		{"nested", "[dedup]\nwindw = \"5m\"", nil, "dedup.windw", `did you mean "window"`},
		{"observer", valid + "\n[observers.x]\nevnt = \"INSERT\"\nactions = [{type = \"log\"}]", nil, "observers.x.evnt", `did you mean "event"`},
		{"retry", valid + "\n[observers.y]\nactions = [{type = \"log\"}]\nretry = { max_attempt = 3 }", nil, "observers.y.retry.max_attempt", `did you mean "max_attempts"`},
		{"far from any key", `zzzzzzzz = 1`, nil, "zzzzzzzz", ""},
		{"environment", "", []string{"MILLRACE_DEDUPE__WINDOW=5m"}, "dedupe.window", `did you mean "dedup"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse([]byte(tt.toml), tt.env)
			e := find(err, tt.path)
			if e == nil {
				t.Fatalf("Parse error = %v; want one at %s", err, tt.path)
			}
			if !strings.Contains(e.Msg, "unknown key") || !strings.Contains(e.Msg, tt.want) {
				t.Errorf("%s: %q; want unknown key and %q", tt.path, e.Msg, tt.want)
			}
		})
	}
}

func TestWrongTypes(t *testing.T) {
	tests := []struct{ toml, path, want string }{
		{`topology = 3`, "topology", "must be a string"},
		{"[http]\nmax_body_bytes = \"big\"", "http.max_body_bytes", "must be an integer"},
		{"[dedup]\nwindow = 300", "dedup.window", "duration string"},
		{"[dedup]\nwindow = \"5 minutes\"", "dedup.window", "bad duration"},
		{"[cache]\nenabled = \"maybe\"", "cache.enabled", "true or false"},
		{`dedup = "on"`, "dedup", "must be a table"},
		{"[[sources]]\nname = \"a\"\npostgres_url = \"x\"\ntables = 5", "sources[0].tables", "must be a list"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			_, err := config.Parse([]byte(tt.toml), nil)
			e := find(err, tt.path)
			if e == nil || !strings.Contains(e.Msg, tt.want) {
				t.Fatalf("Parse(%q) = %v; want %q at %s", tt.toml, err, tt.want, tt.path)
			}
		})
	}
}

// TestValidate starts from a valid config and breaks one rule at a time.
// The topology key and the topologies' own sections are checked by the
// topologies' registry (topologies.TestValidate).
// ep edits a config's one delivery.endpoints entry.
func ep(f func(*config.EndpointLimit)) func(*config.Config) {
	return func(c *config.Config) {
		e := config.EndpointLimit{Endpoint: "https://hooks.example.com", MaxConcurrency: 20}
		f(&e)
		c.Delivery.Endpoints = []config.EndpointLimit{e}
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *config.Config)
		path   string
	}{
		{"role", func(c *config.Config) { c.Role = "both" }, "role"},
		{"log level", func(c *config.Config) { c.Log.Level = "loud" }, "log.level"},
		{"log format", func(c *config.Config) { c.Log.Format = "xml" }, "log.format"},
		{"bus driver", func(c *config.Config) { c.Bus.Driver = "kafka" }, "bus.driver"},
		{"http addr", func(c *config.Config) { c.HTTP.Addr = "8080" }, "http.addr"},
		{"max body", func(c *config.Config) { c.HTTP.MaxBodyBytes = 0 }, "http.max_body_bytes"},
		{"open ingest beyond loopback", func(c *config.Config) { c.HTTP.Addr = "0.0.0.0:8080" }, "http.ingest_tokens"},
		{"open ingest on every interface", func(c *config.Config) { c.HTTP.Addr = ":8080" }, "http.ingest_tokens"},
		{"ingest token name", tok(func(t *config.IngestToken) { t.Name = "" }), "http.ingest_tokens[0].name"},
		{"ingest token twice", func(c *config.Config) {
			c.HTTP.IngestTokens = []config.IngestToken{{Name: "a", TokenEnv: "A"}, {Name: "a", TokenEnv: "B"}}
		}, "http.ingest_tokens[1].name"},
		{"ingest token without credential", tok(func(t *config.IngestToken) { t.TokenEnv = "" }), "http.ingest_tokens[0]"},
		{"ingest token with both credentials", tok(func(t *config.IngestToken) { t.SecretEnv = "S" }), "http.ingest_tokens[0]"},
		{"ingest token event type", tok(func(t *config.IngestToken) { t.EventTypes = []string{"UPSERT"} }), "http.ingest_tokens[0].event_types[0]"},
		{"ingest token entity type", tok(func(t *config.IngestToken) { t.EntityTypes = []string{""} }), "http.ingest_tokens[0].entity_types[0]"},
		{"ingest token rate", tok(func(t *config.IngestToken) { t.Rate = "50 per second" }), "http.ingest_tokens[0].rate"},
		{"ingest token rate unit", tok(func(t *config.IngestToken) { t.Rate = "50/d" }), "http.ingest_tokens[0].rate"},
		{"ingest token burst", tok(func(t *config.IngestToken) { t.Rate = "5/s"; t.Burst = -1 }), "http.ingest_tokens[0].burst"},
		{"read timeout", func(c *config.Config) { c.HTTP.ReadTimeout = 0 }, "http.read_timeout"},
		{"shutdown timeout", func(c *config.Config) { c.Router.ShutdownTimeout = 0 }, "router.shutdown_timeout"},
		{"startup timeout", func(c *config.Config) { c.Router.StartupTimeout = -1 }, "router.startup_timeout"},
		{"topic", func(c *config.Config) { c.Router.Topic = "" }, "router.topic"},
		{"max in flight", func(c *config.Config) { c.Router.MaxInFlight = 0 }, "router.max_in_flight"},
		{"max buffered below in flight", func(c *config.Config) { c.Router.MaxBuffered = 10 }, "router.max_buffered"},
		{"max buffered too large", func(c *config.Config) { c.Router.MaxBuffered = 2_000_000 }, "router.max_buffered"},
		{"dedup window low", func(c *config.Config) { c.Dedup.Window = config.Duration(time.Millisecond) }, "dedup.window"},
		{"dedup window high", func(c *config.Config) { c.Dedup.Window = config.Duration(2 * time.Hour) }, "dedup.window"},
		{"dedup lease low", func(c *config.Config) { c.Dedup.Lease = config.Duration(time.Millisecond) }, "dedup.lease"},
		{"dedup lease high", func(c *config.Config) { c.Dedup.Lease = config.Duration(time.Hour) }, "dedup.lease"},
		{"cache ttl", func(c *config.Config) { c.Cache.TTL = config.Duration(2 * time.Hour) }, "cache.ttl"},
		{"dlq max entries", func(c *config.Config) { c.DLQ.MaxEntries = -1 }, "dlq.max_entries"},
		{"gc percent", func(c *config.Config) { c.Runtime.GCPercent = -1 }, "runtime.gc_percent"},
		{"memory limit unit", func(c *config.Config) { c.Runtime.MemoryLimit = "512MiB" }, "runtime.memory_limit"},
		{"memory limit zero", func(c *config.Config) { c.Runtime.MemoryLimit = "0MB" }, "runtime.memory_limit"},
		{"delivery max concurrency", func(c *config.Config) { c.Delivery.MaxConcurrency = 0 }, "delivery.max_concurrency"},
		{"delivery probe after", func(c *config.Config) { c.Delivery.ProbeAfter = 0 }, "delivery.probe_after"},
		{"endpoint name missing", ep(func(e *config.EndpointLimit) { e.Endpoint = "" }), "delivery.endpoints[0].endpoint"},
		{"endpoint name not a url", ep(func(e *config.EndpointLimit) { e.Endpoint = "hooks.example.com" }), "delivery.endpoints[0].endpoint"},
		{"endpoint twice", func(c *config.Config) {
			e := config.EndpointLimit{Endpoint: "https://a.example"}
			c.Delivery.Endpoints = []config.EndpointLimit{e, e}
		}, "delivery.endpoints[1].endpoint"},
		{"endpoint max concurrency", ep(func(e *config.EndpointLimit) { e.MaxConcurrency = -1 }), "delivery.endpoints[0].max_concurrency"},
		{"endpoint rate", ep(func(e *config.EndpointLimit) { e.Rate = "fast" }), "delivery.endpoints[0].rate"},
		{"endpoint burst negative", ep(func(e *config.EndpointLimit) { e.Rate = "5/s"; e.Burst = -1 }), "delivery.endpoints[0].burst"},
		{"endpoint burst without rate", ep(func(e *config.EndpointLimit) { e.Burst = 5 }), "delivery.endpoints[0].burst"},
		{"breaker ratio high", func(c *config.Config) { c.Breaker.FailureRatio = 1.5 }, "breaker.failure_ratio"},
		{"breaker ratio negative", func(c *config.Config) { c.Breaker.FailureRatio = -0.1 }, "breaker.failure_ratio"},
		{"breaker never opens", func(c *config.Config) { c.Breaker.ConsecutiveFailures = 0 }, "breaker.consecutive_failures"},
		{"breaker min requests", func(c *config.Config) { c.Breaker.FailureRatio, c.Breaker.MinRequests = 0.5, 0 }, "breaker.min_requests"},
		{"breaker window", func(c *config.Config) { c.Breaker.FailureRatio, c.Breaker.Window = 0.5, 0 }, "breaker.window"},
		{"breaker open interval", func(c *config.Config) { c.Breaker.OpenInterval = 0 }, "breaker.open_interval"},
		{"breaker open interval high", func(c *config.Config) { c.Breaker.OpenInterval = config.Duration(48 * time.Hour) }, "breaker.open_interval"},
		{"breaker first open interval", func(c *config.Config) { c.Breaker.FirstOpenInterval = config.Duration(time.Millisecond) }, "breaker.first_open_interval"},
		{"breaker probes", func(c *config.Config) { c.Breaker.HalfOpenProbes = 0 }, "breaker.half_open_probes"},
		{"action breaker not a table", obs(func(o *config.Observer) {
			o.Actions = []config.Action{{"type": "log", "breaker": "fast"}}
		}), "observers.o.actions[0].breaker"},
		{"action breaker unknown key", obs(func(o *config.Observer) {
			o.Actions = []config.Action{{"type": "log", "breaker": map[string]any{"open_for": "5s"}}}
		}), "observers.o.actions[0].breaker.open_for"},
		{"action breaker bad duration", obs(func(o *config.Observer) {
			o.Actions = []config.Action{{"type": "log", "breaker": map[string]any{"open_interval": "soon"}}}
		}), "observers.o.actions[0].breaker.open_interval"},
		{"action breaker ratio", obs(func(o *config.Observer) {
			o.Actions = []config.Action{{"type": "log", "breaker": map[string]any{"failure_ratio": 2.0}}}
		}), "observers.o.actions[0].breaker.failure_ratio"},
		{"action breaker never opens", obs(func(o *config.Observer) {
			o.Actions = []config.Action{{"type": "log", "breaker": map[string]any{"consecutive_failures": int64(0)}}}
		}), "observers.o.actions[0].breaker.consecutive_failures"},
		{"action breaker probes", obs(func(o *config.Observer) {
			o.Actions = []config.Action{{"type": "log", "breaker": map[string]any{"half_open_probes": int64(0)}}}
		}), "observers.o.actions[0].breaker.half_open_probes"},
		{"source name missing", func(c *config.Config) { c.Sources = []config.Source{src("")} }, "sources[0].name"},
		{"source name chars", func(c *config.Config) { c.Sources = []config.Source{src("a b")} }, "sources[0].name"},
		{"source name twice", func(c *config.Config) { c.Sources = []config.Source{src("a"), src("a")} }, "sources[1].name"},
		{"source url", func(c *config.Config) { s := src("a"); s.PostgresURL = ""; c.Sources = []config.Source{s} }, "sources[0]"},
		{"source batch", func(c *config.Config) { s := src("a"); s.BatchSize = 0; c.Sources = []config.Source{s} }, "sources[0].batch_size"},
		{"source poll", func(c *config.Config) { s := src("a"); s.PollInterval = 0; c.Sources = []config.Source{s} }, "sources[0].poll_interval"},
		{"source capture", func(c *config.Config) { s := src("a"); s.Capture = "cdc"; c.Sources = []config.Source{s} }, "sources[0].capture"},
		{"source wal with fraiseql", func(c *config.Config) {
			s := src("a")
			s.Capture, s.Mode = "wal", "fraiseql"
			c.Sources = []config.Source{s}
		}, "sources[0].capture"},
		{"source slot", func(c *config.Config) {
			s := src("a")
			s.Capture, s.Slot = "wal", "Bad-Slot"
			c.Sources = []config.Source{s}
		}, "sources[0].slot"},
		{"source publication", func(c *config.Config) {
			s := src("a")
			s.Capture, s.Publication = "wal", "p;x"
			c.Sources = []config.Source{s}
		}, "sources[0].publication"},
		{"source max retained wal", func(c *config.Config) {
			s := src("a")
			s.Capture, s.MaxRetainedWAL = "wal", "1 parsec"
			c.Sources = []config.Source{s}
		}, "sources[0].max_retained_wal"},
		{"source replica identity", func(c *config.Config) {
			s := src("a")
			s.Capture, s.ReplicaIdentity = "wal", "nothing"
			c.Sources = []config.Source{s}
		}, "sources[0].replica_identity"},
		{"database url", func(c *config.Config) { c.Databases = map[string]config.Database{"main": {}} }, "databases.main"},
		{"smtp tls", func(c *config.Config) { c.SMTP.Host = "mail"; c.SMTP.From = "a@b"; c.SMTP.TLS = "ssl" }, "smtp.tls"},
		{"smtp port", func(c *config.Config) { c.SMTP.Host = "mail"; c.SMTP.From = "a@b"; c.SMTP.Port = 0 }, "smtp.port"},
		{"smtp from", func(c *config.Config) { c.SMTP.Host = "mail" }, "smtp.from"},
		{"observer name", func(c *config.Config) { c.Observers["bad name"] = c.Observers["o"] }, "observers.bad name"},
		{"observer event", obs(func(o *config.Observer) { o.Event = "UPSERT" }), "observers.o.event"},
		{"observer entity", obs(func(o *config.Observer) { o.Entity = "" }), "observers.o.entity"},
		{"observer actions", obs(func(o *config.Observer) { o.Actions = nil }), "observers.o.actions"},
		{"action type", obs(func(o *config.Observer) { o.Actions = []config.Action{{"url": "x"}} }), "observers.o.actions[0].type"},
		{"on_failure", obs(func(o *config.Observer) { o.OnFailure = "alert" }), "observers.o.on_failure"},
		{"park with a capped dlq", func(c *config.Config) {
			o := c.Observers["o"]
			o.OnFailure = "park"
			c.Observers["o"] = o
			c.DLQ.MaxEntries = 10
		}, "observers.o.on_failure"},
		{"concurrency", obs(func(o *config.Observer) { o.Concurrency = 0 }), "observers.o.concurrency"},
		{"timeout", obs(func(o *config.Observer) { o.Timeout = 0 }), "observers.o.timeout"},
		{"retry attempts", obs(func(o *config.Observer) { o.Retry.MaxAttempts = 0 }), "observers.o.retry.max_attempts"},
		{"retry backoff", obs(func(o *config.Observer) { o.Retry.Backoff = "random" }), "observers.o.retry.backoff"},
		{"retry initial", obs(func(o *config.Observer) { o.Retry.Initial = 0 }), "observers.o.retry.initial"},
		{"retry max", obs(func(o *config.Observer) { o.Retry.Max = config.Duration(time.Millisecond) }), "observers.o.retry.max"},
		{"retry jitter", obs(func(o *config.Observer) { o.Retry.Jitter = 2 }), "observers.o.retry.jitter"},
	}
	base := func() *config.Config {
		c := config.Default()
		o := config.Observer{}
		o.SetDefaults()
		o.Actions = []config.Action{{"type": "log"}}
		c.Observers = map[string]config.Observer{"o": o}
		return c
	}
	if err := base().Validate(); err != nil {
		t.Fatalf("base config invalid: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mutate(c)
			err := c.Validate()
			if find(err, tt.path) == nil {
				t.Fatalf("Validate() = %v; want an error at %s", err, tt.path)
			}
			if n := len(config.Errors(err)); n != 1 {
				t.Errorf("Validate() gave %d errors; want 1: %v", n, err)
			}
		})
	}
}

func src(name string) config.Source {
	s := config.Source{Name: name, PostgresURL: "postgres://x"}
	s.SetDefaults()
	return s
}

// tok mutates a valid ingest token, the config's only one.
func tok(f func(t *config.IngestToken)) func(c *config.Config) {
	return func(c *config.Config) {
		t := config.IngestToken{Name: "producer", TokenEnv: "PRODUCER_TOKEN"}
		f(&t)
		c.HTTP.IngestTokens = []config.IngestToken{t}
	}
}

// TestIngestBeyondLoopback: a non-loopback http.addr needs ingest
// credentials or ingest off; loopback addresses do not.
func TestIngestBeyondLoopback(t *testing.T) {
	for _, c := range []struct {
		toml  string
		valid bool
	}{
		{`http = { addr = "127.0.0.1:8080" }`, true},
		{`http = { addr = "[::1]:8080" }`, true},
		{`http = { addr = "localhost:8080" }`, true},
		{`http = { addr = "0.0.0.0:8080" }`, false},
		{`http = { addr = "10.1.2.3:8080" }`, false},
		{`http = { addr = "[::]:8080" }`, false},
		{`http = { addr = "0.0.0.0:8080", ingest = false }`, true},
		{`http = { addr = "0.0.0.0:8080", ingest_tokens = [{ name = "shop", token_env = "SHOP_TOKEN" }] }`, true},
		{`http = { addr = "0.0.0.0:8080", ingest_tokens = [{ name = "shop", secret_env = "SHOP_SECRET", rate = "100/s" }] }`, true},
	} {
		_, err := config.Parse([]byte(c.toml), nil)
		e := find(err, "http.ingest_tokens")
		switch {
		case c.valid && err != nil:
			t.Errorf("%s: %v; want valid", c.toml, err)
		case !c.valid && (e == nil || !strings.Contains(e.Msg, "http.ingest = false") || !strings.Contains(e.Msg, "[[http.ingest_tokens]]")):
			t.Errorf("%s: %v; want an error at http.ingest_tokens naming [[http.ingest_tokens]] and http.ingest = false", c.toml, err)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]float64{"50/s": 50, "600/m": 10, "3600/h": 1, "0.5/s": 0.5} {
		if got, err := config.ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "50", "/s", "0/s", "-1/s", "x/s", "5/ms", "Inf/s"} {
		if _, err := config.ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) took it", in)
		}
	}
}

func obs(f func(o *config.Observer)) func(c *config.Config) {
	return func(c *config.Config) {
		o := c.Observers["o"]
		f(&o)
		c.Observers["o"] = o
	}
}

// TestAllProblemsAtOnce is the promise of `millrace validate`: an unknown
// key, a bad duration and an observer without actions, all reported.
func TestAllProblemsAtOnce(t *testing.T) {
	_, err := config.Parse([]byte(`
[dedup]
windw = "5m"
[cache]
ttl = "60x"
[observers.empty]
event = "INSERT"
`), nil)
	for _, p := range []string{"dedup.windw", "cache.ttl", "observers.empty.actions"} {
		if find(err, p) == nil {
			t.Errorf("no error at %s in %v", p, err)
		}
	}
	if n := len(config.Errors(err)); n != 3 {
		t.Errorf("got %d errors; want 3: %v", n, err)
	}
}

func TestCheckEnv(t *testing.T) {
	if _, err := config.Parse([]byte(valid+"\n[http]\nadmin_token_env = \"TOKEN\"\n"), nil); err == nil {
		t.Fatal("a repeated [http] table must be a TOML error")
	}
	cfg, err := config.Parse([]byte(valid), []string{"MILLRACE_HTTP__ADMIN_TOKEN_ENV=TOKEN"})
	if err != nil {
		t.Fatal(err)
	}
	lookup := func(set ...string) func(string) (string, bool) {
		return func(k string) (string, bool) {
			for _, s := range set {
				if s == k {
					return "v", true
				}
			}
			return "", false
		}
	}
	err = cfg.CheckEnv(lookup(), config.Features{})
	for _, p := range []string{"http.admin_token_env", "observers.order_shipped.actions[0].secret_env"} {
		if e := find(err, p); e == nil || !strings.Contains(e.Msg, "not set") {
			t.Errorf("CheckEnv: no error at %s: %v", p, err)
		}
	}
	if err := cfg.CheckEnv(lookup("TOKEN", "SHIPPED_SECRET"), config.Features{}); err != nil {
		t.Errorf("CheckEnv with every variable set = %v", err)
	}
}

func TestTOMLMasksSecrets(t *testing.T) {
	cfg, err := config.Parse([]byte(valid+"\n[redis]\nurl = \"redis://user:hunter2@127.0.0.1:6379/0\"\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := cfg.TOML()
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	if strings.Contains(out, "hunter2") {
		t.Errorf("password printed:\n%s", out)
	}
	for _, want := range []string{"REDACTED", "SHIPPED_SECRET", "window = '2m0s'"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The printed config must load back to the same values.
	back, err := config.Parse(b, nil)
	if err != nil {
		t.Fatalf("printed config does not load: %v\n%s", err, out)
	}
	if back.Dedup.Window != cfg.Dedup.Window || back.Observers["order_shipped"].Retry != cfg.Observers["order_shipped"].Retry {
		t.Error("printed config does not round-trip")
	}
}

// router.startup_timeout = "0" is valid: it means fail at once.
func TestStartupTimeout(t *testing.T) {
	if d := config.Default().Router.StartupTimeout.D(); d != time.Minute {
		t.Errorf("default router.startup_timeout = %s, want 1m", d)
	}
	cfg, err := config.Parse([]byte(valid+"\n[router]\nstartup_timeout = \"0s\"\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Router.StartupTimeout != 0 {
		t.Errorf("router.startup_timeout = %s, want 0s", cfg.Router.StartupTimeout)
	}
}

func TestMaskURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"redis://user:hunter2@h:6379/0", "redis://user:REDACTED@h:6379/0"},
		{"https://h/in?team=ops&token=abc", "https://h/in?team=ops&token=REDACTED"},
		{"https://h/x?Access_Token=a&API_KEY=b&apikey=c&key=d&sig=e&Signature=f&secret=g&password=h",
			"https://h/x?Access_Token=REDACTED&API_KEY=REDACTED&apikey=REDACTED&key=REDACTED&sig=REDACTED&Signature=REDACTED&secret=REDACTED&password=REDACTED"},
		{"postgres://u:p@h/db?sslmode=disable&sslpassword=x", "postgres://u:REDACTED@h/db?sslmode=disable&sslpassword=REDACTED"},
		// Nothing to mask: returned as written, encoding included.
		{"https://h/in?b=1&a=%7Bx%7D&monkey=1", "https://h/in?b=1&a=%7Bx%7D&monkey=1"},
		{"postgres://u@h/db", "postgres://u@h/db"},
		{"nats://a:pw1@n1:4222,nats://b:pw2@n2:4222", "nats://a:REDACTED@n1:4222,nats://b:REDACTED@n2:4222"},
		{"host=db user=app password=s3cr3t dbname=x", "host=db user=app password=REDACTED dbname=x"},
		{"host=db password='a b\\'c' dbname=x", "host=db password=REDACTED dbname=x"},
		{"UPDATE users SET password = $1", "UPDATE users SET password = $1"},
		{"not a url", "not a url"},
	} {
		if got := config.MaskURL(tc.in); got != tc.want {
			t.Errorf("MaskURL(%q) = %q; want %q", tc.in, got, tc.want)
		}
	}
}

func TestRetryDelay(t *testing.T) {
	r := config.Retry{Initial: config.Duration(100 * time.Millisecond), Max: config.Duration(time.Second)}
	for _, tt := range []struct {
		backoff string
		n       int
		want    time.Duration
	}{
		{"exponential", 1, 100 * time.Millisecond},
		{"exponential", 3, 400 * time.Millisecond},
		{"exponential", 10, time.Second},
		{"linear", 3, 300 * time.Millisecond},
		{"linear", 20, time.Second},
		{"fixed", 5, 100 * time.Millisecond},
	} {
		r.Backoff = tt.backoff
		if got := r.Delay(tt.n); got != tt.want {
			t.Errorf("%s Delay(%d) = %s; want %s", tt.backoff, tt.n, got, tt.want)
		}
	}
}

func find(err error, path string) *config.Error {
	for _, e := range config.Errors(err) {
		var ce *config.Error
		if errors.As(e, &ce) && ce.Path == path {
			return ce
		}
	}
	return nil
}

// An empty quoted key (found by FuzzParse) is reported with a path.
func TestEmptyKeyHasAPath(t *testing.T) {
	_, err := config.Parse([]byte(`''=0`), nil)
	if e := find(err, `""`); e == nil || !strings.Contains(e.Msg, "unknown key") {
		t.Fatalf("Parse(''=0) = %v; want an unknown-key error at path \"\"", err)
	}
}

// Literal credentials in an action's headers are masked; a template
// that names where the credential comes from is printed as written.
func TestTOMLMasksHeaderCredentials(t *testing.T) {
	src := valid + `headers = { Authorization = "Bearer hunter2-a", "X-Api-Key" = "hunter2-b", Cookie = "sid=hunter2-c", "X-Trace" = "visible-value", "X-Hook-Token" = "{{ env \"HOOK_TOKEN\" }}" }
`
	cfg, err := config.Parse([]byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := cfg.TOML()
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	if strings.Contains(out, "hunter2") {
		t.Errorf("a header credential is printed:\n%s", out)
	}
	for _, want := range []string{"visible-value", `{{ env "HOOK_TOKEN" }}`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, config.Masked); n < 3 {
		t.Errorf("%d values masked, want at least the 3 header credentials:\n%s", n, out)
	}
}

func TestSlotNameDefaultsFromTheSource(t *testing.T) {
	s := src("Orders-DB")
	if s.SlotName() != "millrace_orders_db" || s.PublicationName() != "millrace_orders_db" {
		t.Errorf("SlotName, PublicationName = %q, %q; want millrace_orders_db", s.SlotName(), s.PublicationName())
	}
	s.Capture = config.CaptureWAL
	c := config.Default()
	c.Sources = []config.Source{s}
	if err := c.Validate(); err != nil {
		t.Errorf("a wal source with default names: %v", err)
	}
	for in, want := range map[string]int64{"1GB": 1 << 30, "512MB": 512 << 20, "64kB": 64 << 10, "100": 100} {
		if n, err := config.ParseSize(in); err != nil || n != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, n, err, want)
		}
	}
}

// TestCheckEnvObserveRole: a process in the observe role does not open
// the sources unless they are the bus, so it needs none of their
// variables; on a topology whose bus is the sources' change logs it does.
func TestCheckEnvObserveRole(t *testing.T) {
	src := "topology = \"nats\"\nrole = \"observe\"\n[[sources]]\nname = \"orders_db\"\npostgres_url_env = \"MILLRACE_TEST_UNSET_ORDERS_URL\"\ntables = [\"public.orders\"]\n"
	cfg, err := config.Parse([]byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	none := func(string) (string, bool) { return "", false }
	if err := cfg.CheckEnv(none, config.Features{}); err != nil {
		t.Errorf("observe role, sources not the bus: CheckEnv = %v, want nil", err)
	}
	err = cfg.CheckEnv(none, config.Features{SourcesAreBus: true})
	if e := find(err, "sources[0].postgres_url_env"); e == nil {
		t.Errorf("observe role, sources are the bus: CheckEnv = %v, want an error at sources[0].postgres_url_env", err)
	}
	cfg.Role = "all"
	if e := find(cfg.CheckEnv(none, config.Features{}), "sources[0].postgres_url_env"); e == nil {
		t.Error("role all: CheckEnv does not ask for the source's variable")
	}
}

func TestDeliveryDecodes(t *testing.T) {
	c, err := config.Parse([]byte(`
[delivery]
max_concurrency = 32
adaptive = false
[[delivery.endpoints]]
endpoint = "https://hooks.example.com"
max_concurrency = 20
rate = "600/m"
burst = 10
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := config.Delivery{MaxConcurrency: 32, Adaptive: false, ProbeAfter: config.Duration(30 * time.Second), Endpoints: []config.EndpointLimit{
		{Endpoint: "https://hooks.example.com", MaxConcurrency: 20, Rate: "600/m", Burst: 10}}}
	if !reflect.DeepEqual(c.Delivery, want) {
		t.Fatalf("delivery = %+v; want %+v", c.Delivery, want)
	}
	if d := config.Default().Delivery; d.MaxConcurrency != 64 || !d.Adaptive {
		t.Fatalf("default delivery = %+v; want max_concurrency 64, adaptive", d)
	}
}

// [breaker] sets the defaults of every endpoint; an action's own
// "breaker" table overrides some keys and keeps the rest.
func TestBreakerSection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "millrace.toml")
	if err := os.WriteFile(path, []byte(`
[breaker]
failure_ratio = 0.5
min_requests = 20
window = "2m"

[observers.o]
[[observers.o.actions]]
type = "log"
[[observers.o.actions]]
type = "log"
breaker = { open_interval = "5s", half_open_probes = 3 }
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want := config.Breaker{ConsecutiveFailures: 5, FailureRatio: 0.5, MinRequests: 20, Window: config.Duration(2 * time.Minute),
		FirstOpenInterval: config.Duration(time.Second), OpenInterval: config.Duration(30 * time.Second), HalfOpenProbes: 1}
	if cfg.Breaker != want {
		t.Errorf("breaker = %+v; want %+v", cfg.Breaker, want)
	}
	acts := cfg.Observers["o"].Actions
	if got, err := cfg.BreakerFor(acts[0], "observers.o.actions[0]"); err != nil || got != want {
		t.Errorf("BreakerFor(actions[0]) = %+v, %v; want [breaker] %+v", got, err, want)
	}
	own := want
	own.OpenInterval, own.HalfOpenProbes = config.Duration(5*time.Second), 3
	if got, err := cfg.BreakerFor(acts[1], "observers.o.actions[1]"); err != nil || got != own {
		t.Errorf("BreakerFor(actions[1]) = %+v, %v; want %+v", got, err, own)
	}
}

// The console asks for the admin token: turning it on without
// http.admin_token_env is an error at http.console.
func TestConsoleNeedsAdminToken(t *testing.T) {
	_, err := config.Parse([]byte(valid), []string{"MILLRACE_HTTP__CONSOLE=true"})
	if e := find(err, "http.console"); e == nil || !strings.Contains(e.Msg, "http.admin_token_env") {
		t.Fatalf("console without admin_token_env: want an error at http.console naming http.admin_token_env, got %v", err)
	}
	cfg, err := config.Parse([]byte(valid), []string{"MILLRACE_HTTP__CONSOLE=true", "MILLRACE_HTTP__ADMIN_TOKEN_ENV=TOKEN"})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.HTTP.Console {
		t.Fatal("http.console = true did not reach the config")
	}
}

// [tracing] is off by default; a bad ratio, an empty service name and an
// endpoint that is not an http(s) URL each name their key.
func TestTracingSection(t *testing.T) {
	cfg, err := config.Parse([]byte(valid), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Tracing.Enabled || cfg.Tracing.SampleRatio != 1 || cfg.Tracing.ServiceName != "millrace" {
		t.Fatalf("tracing defaults: got %+v", cfg.Tracing)
	}
	_, err = config.Parse([]byte(valid), []string{"MILLRACE_TRACING__ENABLED=true", "MILLRACE_TRACING__SAMPLE_RATIO=1.5",
		"MILLRACE_TRACING__SERVICE_NAME=", "MILLRACE_TRACING__ENDPOINT=collector:4318"})
	for _, key := range []string{"tracing.sample_ratio", "tracing.service_name", "tracing.endpoint"} {
		if find(err, key) == nil {
			t.Errorf("want an error at %s, got %v", key, err)
		}
	}
	cfg, err = config.Parse([]byte(valid), []string{"MILLRACE_TRACING__ENABLED=true", "MILLRACE_TRACING__SAMPLE_RATIO=0.25",
		"MILLRACE_TRACING__ENDPOINT=http://127.0.0.1:4318/v1/traces"})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Tracing.Enabled || cfg.Tracing.SampleRatio != 0.25 || cfg.Tracing.Endpoint != "http://127.0.0.1:4318/v1/traces" {
		t.Fatalf("tracing keys did not reach the config: %+v", cfg.Tracing)
	}
}

func TestRuntimeSection(t *testing.T) {
	cfg, err := config.Parse([]byte(valid), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Runtime != (config.Runtime{}) {
		t.Fatalf("runtime defaults: got %+v, want the topology's (zero)", cfg.Runtime)
	}
	cfg, err = config.Parse([]byte(valid), []string{"MILLRACE_RUNTIME__GC_PERCENT=250", "MILLRACE_RUNTIME__MEMORY_LIMIT=512MB"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Runtime.GCPercent != 250 || cfg.Runtime.MemoryLimit != "512MB" {
		t.Fatalf("runtime keys did not reach the config: %+v", cfg.Runtime)
	}
}
