package topologies_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/embedded"
	"github.com/millrace/millrace/topologies/multidb"
	"github.com/millrace/millrace/topologies/nats"
	"github.com/millrace/millrace/topologies/postgres"
	"github.com/millrace/millrace/topologies/redis"
)

// builtins returns a registry holding the five built-in topologies, as
// cli.Defaults does.
func builtins(t *testing.T) *topologies.Registry {
	t.Helper()
	r := topologies.NewRegistry()
	for _, register := range []func(*topologies.Registry) error{
		embedded.Register, multidb.Register, nats.Register, postgres.Register, redis.Register,
	} {
		if err := register(r); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func noBuild(context.Context, *config.Config, *slog.Logger) (*topologies.Backend, error) {
	return nil, errors.New("not built in this test")
}

func TestRegister(t *testing.T) {
	r := builtins(t)
	if got := strings.Join(r.Names(), ","); got != "embedded,multidb,nats,postgres,redis" {
		t.Errorf("Names() = %s", got)
	}
	for _, tt := range []struct {
		top  topologies.Topology
		want string
	}{
		{topologies.Topology{Name: "", Build: noBuild}, "name must match"},
		{topologies.Topology{Name: "Kafka", Build: noBuild}, "name must match"},
		{topologies.Topology{Name: "my-bus", Build: noBuild}, "name must match"},
		{topologies.Topology{Name: "kafka"}, "nil build function"},
		{topologies.Topology{Name: "nats", Build: noBuild}, `register topology "nats": already registered`},
	} {
		if err := r.Register(tt.top); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Register(%q) = %v; want %q", tt.top.Name, err, tt.want)
		}
	}
	if err := r.Register(topologies.Topology{Name: "in_memory", Build: noBuild}); err != nil {
		t.Errorf("Register(in_memory) = %v", err)
	}
	if _, ok := r.Lookup("in_memory"); !ok {
		t.Error("Lookup(in_memory) found nothing")
	}
	defer func() {
		if recover() == nil {
			t.Error("MustRegister of a duplicate did not panic")
		}
	}()
	r.MustRegister(topologies.Topology{Name: "in_memory", Build: noBuild})
}

// TestCheckNamesTheRegisteredTopologies: the topology key is checked
// against the registry, and the message lists what is registered.
func TestCheckNamesTheRegisteredTopologies(t *testing.T) {
	r := builtins(t)
	cfg := config.Default()
	cfg.Topology = "kafka"
	err := r.Check(cfg)
	want := `topology: "kafka" is not one of embedded, multidb, nats, postgres, redis (the topologies of this build)`
	if err == nil || err.Error() != want {
		t.Errorf("Check = %v; want %s", err, want)
	}
	if _, err := r.Build(context.Background(), cfg, nil); err == nil || err.Error() != want {
		t.Errorf("Build = %v; want %s", err, want)
	}
	// A topology without Validate accepts any config.
	r.MustRegister(topologies.Topology{Name: "kafka", Build: noBuild})
	if err := r.Check(cfg); err != nil {
		t.Errorf("Check of a topology without Validate = %v", err)
	}
}

func TestFeatures(t *testing.T) {
	r := builtins(t)
	for name, want := range map[string]config.Features{
		"embedded": {Topics: true, DurableDeadLetters: true},
		"postgres": {DurableDeadLetters: true, SourcesAreBus: true},
		"redis":    {Topics: true, Partitions: true, DurableDeadLetters: true},
		"nats":     {Topics: true, Partitions: true, DurableDeadLetters: true},
		"multidb":  {Topics: true, Partitions: true, DurableDeadLetters: true},
		"kafka":    {},
	} {
		if got := r.Features(name); got != want {
			t.Errorf("Features(%s) = %+v; want %+v", name, got, want)
		}
	}
}

// TestValidate starts from a valid config of each topology and breaks
// one rule of the topology's own checks at a time: the error names the
// key path, with the message config/ gave when it held these checks.
func TestValidate(t *testing.T) {
	src := config.Source{Name: "db", PostgresURL: "postgres://x"}
	src.SetDefaults()
	base := map[string]func(c *config.Config){
		"embedded": func(*config.Config) {},
		"postgres": func(c *config.Config) { c.Postgres.URL = "postgres://x" },
		"redis":    func(c *config.Config) { c.Redis.URL = "redis://x" },
		"nats":     func(*config.Config) {},
		"multidb":  func(c *config.Config) { c.Sources = []config.Source{src} },
	}
	tests := []struct {
		topology, name string
		mutate         func(c *config.Config)
		path, msg      string
	}{
		{"embedded", "port", func(c *config.Config) { c.Embedded.Port = 70000 }, "embedded.port", "must be a port number (0 picks a free one)"},
		{"embedded", "data dir", func(c *config.Config) { c.Embedded.DataDir = "" }, "embedded.data_dir", "must not be empty"},
		{"embedded", "max age", func(c *config.Config) { c.Embedded.MaxAge = 0 }, "embedded.max_age", "must be greater than zero, got 0s"},
		{"embedded", "sync", func(c *config.Config) { c.Embedded.Sync = "bogus" }, "embedded.sync", `"bogus" is not "always" or a duration such as "2m"`},
		{"embedded", "sync too short", func(c *config.Config) { c.Embedded.Sync = "0s" }, "embedded.sync", `0s is out of range [1ms, 24h] (or "always")`},
		{"embedded", "sync too long", func(c *config.Config) { c.Embedded.Sync = "48h" }, "embedded.sync", `48h0m0s is out of range [1ms, 24h] (or "always")`},
		{"nats", "url", func(c *config.Config) { c.NATS.URL = "" }, "nats.url", "must not be empty"},
		{"nats", "stream", func(c *config.Config) { c.NATS.Stream = "A.B" }, "nats.stream", `"A.B" must hold only letters, digits, '_' and '-'`},
		{"nats", "subject prefix", func(c *config.Config) { c.NATS.SubjectPrefix = "a.*" }, "nats.subject_prefix", `"a.*" must be dot-separated tokens of letters, digits, '_' and '-'`},
		{"nats", "consumer", func(c *config.Config) { c.NATS.Consumer = "" }, "nats.consumer", `"" must hold only letters, digits, '_' and '-'`},
		{"nats", "ack wait", func(c *config.Config) { c.NATS.AckWait = 0 }, "nats.ack_wait", "must be greater than zero, got 0s"},
		{"nats", "max deliver", func(c *config.Config) { c.NATS.MaxDeliver = 0 }, "nats.max_deliver", "must be -1 (unlimited) or at least 1, got 0"},
		{"nats", "max age", func(c *config.Config) { c.NATS.MaxAge = -1 }, "nats.max_age", "must not be negative (0 keeps events forever)"},
		{"nats", "replicas", func(c *config.Config) { c.NATS.Replicas = 6 }, "nats.replicas", "must be between 1 and 5, got 6"},
		{"nats", "partitions", func(c *config.Config) { c.NATS.Partitions = -1 }, "nats.partitions", "must be between 0 (off) and 1024, got -1"},
		{"nats", "partition ttl", func(c *config.Config) {
			c.NATS.Partitions, c.NATS.PartitionTTL = 4, config.Duration(time.Millisecond)
		}, "nats.partition_ttl", "must be at least 1s, got 1ms"},
		{"multidb", "sources", func(c *config.Config) { c.Sources = nil }, "sources", "the multidb topology needs at least one [[sources]] entry"},
		{"multidb", "nats section", func(c *config.Config) { c.NATS.Replicas = 0 }, "nats.replicas", "must be between 1 and 5, got 0"},
		{"redis", "no url", func(c *config.Config) { c.Redis.URL = "" }, "redis", "set exactly one of url and url_env"},
		{"redis", "two urls", func(c *config.Config) { c.Redis.URLEnv = "REDIS_URL" }, "redis", "set exactly one of url and url_env"},
		{"redis", "group", func(c *config.Config) { c.Redis.Group = "a b" }, "redis.group", `"a b" may hold only letters, digits, '_' and '-'`},
		{"redis", "consumer", func(c *config.Config) { c.Redis.Consumer = "a:b" }, "redis.consumer", `"a:b" may hold only letters, digits, '_' and '-'`},
		{"redis", "max len", func(c *config.Config) { c.Redis.MaxLen = -1 }, "redis.max_len", "must not be negative (0 keeps every event)"},
		{"redis", "claim idle", func(c *config.Config) { c.Redis.ClaimIdle = 0 }, "redis.claim_idle", "must be greater than zero, got 0s"},
		{"redis", "partitions", func(c *config.Config) { c.Redis.Partitions = 5000 }, "redis.partitions", "must be between 0 (off) and 1024, got 5000"},
		{"redis", "wait replicas", func(c *config.Config) { c.Redis.WaitReplicas = -1 }, "redis.wait_replicas", "must be between 0 (no WAIT) and 100, got -1"},
		{"redis", "wait timeout", func(c *config.Config) { c.Redis.WaitTimeout = config.Duration(5 * time.Second) }, "redis.wait_timeout", "5s is out of range [1ms, 2s]"},
		{"postgres", "two urls", func(c *config.Config) { c.Postgres.URLEnv = "PG_URL" }, "postgres", "set at most one of url and url_env"},
		{"postgres", "nothing to read", func(c *config.Config) { c.Postgres.URL = "" }, "postgres",
			"the postgres topology needs a [[sources]] entry or postgres.url / postgres.url_env"},
		{"postgres", "group", func(c *config.Config) { c.Postgres.Group = "" }, "postgres.group", `"" may hold only letters, digits, '_' and '-'`},
		{"postgres", "schema", func(c *config.Config) { c.Postgres.Schema = "my-schema" }, "postgres.schema",
			`"my-schema" must be a plain identifier (letters, digits, '_'; at most 48 bytes)`},
	}
	r := builtins(t)
	valid := func(topology string) *config.Config {
		c := config.Default()
		c.Topology = topology
		base[topology](c)
		return c
	}
	for topology := range base {
		c := valid(topology)
		if err := errors.Join(c.Validate(), r.Check(c)); err != nil {
			t.Fatalf("base %s config invalid: %v", topology, err)
		}
	}
	for _, tt := range tests {
		t.Run(tt.topology+"/"+tt.name, func(t *testing.T) {
			c := valid(tt.topology)
			tt.mutate(c)
			if err := c.Validate(); err != nil {
				t.Fatalf("config.Validate() = %v; the topology's own checks must find this", err)
			}
			err := r.Check(c)
			errs := config.Errors(err)
			if len(errs) != 1 || errs[0].Error() != tt.path+": "+tt.msg {
				t.Fatalf("Check() = %v; want exactly %s: %s", err, tt.path, tt.msg)
			}
		})
	}
	// A topology checks its own sections only.
	c := valid("embedded")
	c.NATS.Replicas, c.Redis.Group, c.Postgres.Schema = 0, "a b", "my-schema"
	if err := r.Check(c); err != nil {
		t.Errorf("embedded Check of other topologies' sections = %v; want nil", err)
	}
}

// TestPartitionsNeedTheFeature: nats.partitions and redis.partitions
// are refused, at their key, on a topology whose Features have no
// partitions, and accepted on one that has them.
func TestPartitionsNeedTheFeature(t *testing.T) {
	r := builtins(t)
	cfg := func(topology string, nats, redis int) *config.Config {
		c := config.Default()
		c.Topology = topology
		c.Postgres.URL, c.Redis.URL = "postgres://x", "redis://x"
		c.NATS.Partitions, c.Redis.Partitions = nats, redis
		return c
	}
	for _, tt := range []struct {
		topology    string
		nats, redis int
		want        string
	}{
		{"embedded", 4, 0, "nats.partitions: is 4, but the embedded topology has no partitions (leave it 0)"},
		{"postgres", 0, 8, "redis.partitions: is 8, but the postgres topology has no partitions (leave it 0)"},
		{"postgres", 2, 3, "nats.partitions: is 2, but the postgres topology has no partitions (leave it 0)\n" +
			"redis.partitions: is 3, but the postgres topology has no partitions (leave it 0)"},
		{"embedded", 0, 0, ""},
		{"nats", 4, 0, ""},
		{"redis", 0, 8, ""},
	} {
		var got []string
		for _, e := range config.Errors(r.Check(cfg(tt.topology, tt.nats, tt.redis))) {
			got = append(got, e.Error())
		}
		if strings.Join(got, "\n") != tt.want {
			t.Errorf("%s with nats.partitions %d, redis.partitions %d: Check() =\n%s\nwant\n%s",
				tt.topology, tt.nats, tt.redis, strings.Join(got, "\n"), tt.want)
		}
	}
	// A topology of a custom binary declares partitions like a built-in.
	r.MustRegister(topologies.Topology{Name: "sharded", Build: noBuild, Features: config.Features{Partitions: true}})
	r.MustRegister(topologies.Topology{Name: "single", Build: noBuild})
	if err := r.Check(cfg("sharded", 4, 0)); err != nil {
		t.Errorf("Check(sharded) = %v; want nil", err)
	}
	if err := r.Check(cfg("single", 4, 0)); err == nil || !strings.HasPrefix(err.Error(), "nats.partitions: ") {
		t.Errorf("Check(single) = %v; want the nats.partitions error", err)
	}
}

// bus.driver = "watermill" is refused, naming the key, on a topology
// without an upstream driver, and refuses partitions, naming theirs.
func TestWatermillDriverNeedsTheTopology(t *testing.T) {
	r := builtins(t)
	cfg := func(topology string, nats, redis int) *config.Config {
		c := config.Default()
		c.Topology = topology
		c.Bus.Driver = config.DriverWatermill
		c.Postgres.URL, c.Redis.URL = "postgres://x", "redis://x"
		c.NATS.Partitions, c.Redis.Partitions = nats, redis
		return c
	}
	for _, tt := range []struct {
		topology    string
		nats, redis int
		want        string
	}{
		{"postgres", 0, 0, `bus.driver: "watermill": the postgres topology has no Watermill driver (use "millrace")`},
		{"nats", 4, 0, `nats.partitions: is 4, but bus.driver "watermill" has no partitions (leave it 0, or use the "millrace" driver)`},
		{"redis", 0, 8, `redis.partitions: is 8, but bus.driver "watermill" has no partitions (leave it 0, or use the "millrace" driver)`},
		{"embedded", 0, 0, ""},
		{"nats", 0, 0, ""},
		{"redis", 0, 0, ""},
	} {
		var got []string
		for _, e := range config.Errors(r.Check(cfg(tt.topology, tt.nats, tt.redis))) {
			got = append(got, e.Error())
		}
		if strings.Join(got, "\n") != tt.want {
			t.Errorf("%s: Check() =\n%s\nwant\n%s", tt.topology, strings.Join(got, "\n"), tt.want)
		}
	}
}

// WithBus keeps the base's checks and features but partitions, and
// refuses bus.driver = "watermill", naming the key.
func TestWithBus(t *testing.T) {
	base := topologies.Topology{Name: "base", Build: noBuild, Features: config.Features{Topics: true, Partitions: true},
		Validate: func(*config.Config) error { return config.Errorf("base.key", "base check") }}
	custom := topologies.WithBus("custom", base, nil)
	if custom.Features != (config.Features{Topics: true}) {
		t.Errorf("features %+v, want the base's without partitions", custom.Features)
	}
	r := topologies.NewRegistry()
	r.MustRegister(custom)
	cfg := config.Default()
	cfg.Topology = "custom"
	cfg.Bus.Driver = config.DriverWatermill
	var got []string
	for _, e := range config.Errors(r.Check(cfg)) {
		got = append(got, e.Error())
	}
	want := []string{"base.key: base check",
		`bus.driver: "watermill": the custom topology has no Watermill driver (use "millrace")`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Check() =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
