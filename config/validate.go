package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/millrace/millrace/event"
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_-]*$`)

// schemaRE matches the capture schemas millrace accepts: plain identifiers
// short enough that the trigger names derived from them stay whole.
var schemaRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,47}$`)

// The checks below are shared by config's own validation and by the
// checks that topologies and actions register (topologies.Registry,
// handlers.ConfigChecker), so that one rule gives one message. Each
// returns nil or an *Error at path.

// CheckName reports v unless it is a name: letters, digits, '_' and '-',
// not starting with '-'.
// maxBuffered bounds router.max_buffered: a million held events is
// already gigabytes of memory.
const maxBuffered = 1_000_000

func CheckName(path, v string) error {
	if !nameRE.MatchString(v) {
		return Errorf(path, "%q may hold only letters, digits, '_' and '-'", v)
	}
	return nil
}

// checkListName checks the name of one entry of a list ([[sources]],
// [[http.ingest_tokens]]): present, made of name characters, and not
// used by an earlier entry (what names the list's entries in the error).
// replicationNameRE is what PostgreSQL allows in a replication slot's
// name; publications follow it too, so that both need no quoting.
var replicationNameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

func checkListName(add func(path, format string, args ...any), path, name string, seen map[string]bool, what string) {
	switch {
	case name == "":
		add(path, "is required")
	case !nameRE.MatchString(name):
		add(path, "%q may hold only letters, digits, '_' and '-'", name)
	case seen[name]:
		add(path, "%q is used by another %s", name, what)
	}
	seen[name] = true
}

// CheckSchema reports v unless it is a plain identifier short enough for
// the trigger names derived from it.
func CheckSchema(path, v string) error {
	if !schemaRE.MatchString(v) {
		return Errorf(path, "%q must be a plain identifier (letters, digits, '_'; at most 48 bytes)", v)
	}
	return nil
}

// CheckPositive reports d unless it is greater than zero.
func CheckPositive(path string, d Duration) error {
	if d <= 0 {
		return Errorf(path, "must be greater than zero, got %s", d)
	}
	return nil
}

// Validate checks the meaning of every value and returns every problem,
// joined, each an *Error with its key path. It does no I/O and does not
// look at the environment (see CheckEnv).
func (c *Config) Validate() error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, Errorf(path, format, args...)) }
	oneOf := func(path, v string, allowed ...string) {
		for _, a := range allowed {
			if v == a {
				return
			}
		}
		add(path, "%q is not one of %s", v, strings.Join(allowed, ", "))
	}
	between := func(path string, d Duration, lo, hi time.Duration) {
		if d.D() < lo || d.D() > hi {
			add(path, "%s is out of range [%s, %s]", d, lo, hi)
		}
	}
	positive := func(path string, d Duration) { errs = append(errs, CheckPositive(path, d)) }

	oneOf("role", c.Role, "all", "capture", "observe")
	oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	oneOf("log.format", c.Log.Format, "auto", "text", "json")
	oneOf("bus.driver", c.Bus.Driver, DriverMillrace, DriverWatermill)

	c.validateHTTP(add)
	c.validateTracing(add)
	c.validateRuntime(add)
	if c.HTTP.MaxBodyBytes <= 0 {
		add("http.max_body_bytes", "must be greater than zero")
	}
	positive("http.read_timeout", c.HTTP.ReadTimeout)
	positive("router.shutdown_timeout", c.Router.ShutdownTimeout)
	if c.Router.StartupTimeout < 0 {
		add("router.startup_timeout", "must not be negative (0 fails at once), got %s", c.Router.StartupTimeout)
	}
	if c.Router.Topic == "" {
		add("router.topic", "must not be empty")
	}
	if c.Router.MaxInFlight < 1 {
		add("router.max_in_flight", "must be at least 1")
	}
	if b := c.Router.MaxBuffered; b != 0 && (b < c.Router.MaxInFlight || b > maxBuffered) {
		add("router.max_buffered", "must be 0 (16 × max_in_flight) or from max_in_flight (%d) to %d, got %d",
			c.Router.MaxInFlight, maxBuffered, b)
	}

	between("dedup.window", c.Dedup.Window, time.Second, time.Hour)
	between("dedup.lease", c.Dedup.Lease, time.Second, 10*time.Minute)
	between("cache.ttl", c.Cache.TTL, time.Second, time.Hour)
	for _, st := range []struct{ path, store string }{{"dedup.store", c.Dedup.Store}, {"cache.store", c.Cache.Store}} {
		switch {
		case !slices.Contains(Stores, st.store):
			add(st.path, "%q is not one of memory, redis, postgres (or empty for the topology's store)", st.store)
		case st.store == "redis" && c.Redis.URL == "" && c.Redis.URLEnv == "":
			add(st.path, "%q needs redis.url or redis.url_env", st.store)
		case st.store == "postgres" && c.Postgres.URL == "" && c.Postgres.URLEnv == "":
			add(st.path, "%q needs postgres.url or postgres.url_env", st.store)
		}
	}
	if c.Delivery.MaxConcurrency < 1 {
		add("delivery.max_concurrency", "must be at least 1")
	}
	between("delivery.probe_after", c.Delivery.ProbeAfter, time.Second, time.Hour)
	seenEndpoints := map[string]bool{}
	for i, e := range c.Delivery.Endpoints {
		p := fmt.Sprintf("delivery.endpoints[%d]", i)
		switch {
		case e.Endpoint == "":
			add(p+".endpoint", "is required")
		case !strings.Contains(e.Endpoint, "://"):
			add(p+".endpoint", "%q is not an endpoint name such as \"https://hooks.example.com\" or \"smtp://mail.example.com:587\"", e.Endpoint)
		case seenEndpoints[e.Endpoint]:
			add(p+".endpoint", "%q is listed twice", e.Endpoint)
		}
		seenEndpoints[e.Endpoint] = true
		if e.MaxConcurrency < 0 {
			add(p+".max_concurrency", "must not be negative")
		}
		if e.Rate != "" {
			if _, err := ParseRate(e.Rate); err != nil {
				add(p+".rate", "%v", err)
			}
		}
		if e.Burst < 0 {
			add(p+".burst", "must not be negative")
		}
		if e.Burst > 0 && e.Rate == "" {
			add(p+".burst", "needs a rate")
		}
	}
	if c.DLQ.MaxEntries < 0 {
		add("dlq.max_entries", "must not be negative")
	}
	validateBreaker(add, "breaker", c.Breaker)

	seen := map[string]bool{}
	for i, s := range c.Sources {
		p := Index("sources", i)
		checkListName(add, p+".name", s.Name, seen, "source")
		if (s.PostgresURL == "") == (s.PostgresURLEnv == "") {
			add(p, "set exactly one of postgres_url and postgres_url_env")
		}
		if s.BatchSize < 1 || s.BatchSize > 10000 {
			add(p+".batch_size", "must be between 1 and 10000")
		}
		positive(p+".poll_interval", s.PollInterval)
		errs = append(errs, CheckSchema(p+".schema", s.Schema))
		oneOf(p+".mode", s.Mode, "millrace", "fraiseql")
		if s.Mode == "fraiseql" && len(s.Tables) > 1 {
			add(p+".tables", "mode fraiseql reads one change-log table; name at most one")
		}
		oneOf(p+".capture", s.Capture, CaptureTrigger, CaptureWAL)
		if s.Capture == CaptureWAL {
			if s.Mode == "fraiseql" {
				add(p+".capture", "\"wal\" decodes the watched tables' changes; mode fraiseql reads a change log, use capture = \"trigger\"")
			}
			for _, n := range []struct{ key, v string }{{"slot", s.SlotName()}, {"publication", s.PublicationName()}} {
				if !replicationNameRE.MatchString(n.v) {
					add(p+"."+n.key, "%q must be lower-case letters, digits and '_', at most 63 bytes", n.v)
				}
			}
			if n, err := ParseSize(s.MaxRetainedWAL); err != nil {
				add(p+".max_retained_wal", "%v", err)
			} else if n <= 0 {
				add(p+".max_retained_wal", "must be greater than zero")
			}
			oneOf(p+".replica_identity", s.ReplicaIdentity, "full", "keep")
		}
	}
	for name, d := range c.Databases {
		if (d.URL == "") == (d.URLEnv == "") {
			add("databases."+name, "set exactly one of url and url_env")
		}
	}
	if c.SMTP.Host != "" {
		oneOf("smtp.tls", c.SMTP.TLS, "starttls", "tls", "none")
		if c.SMTP.Port < 1 || c.SMTP.Port > 65535 {
			add("smtp.port", "must be a port number")
		}
		if c.SMTP.From == "" {
			add("smtp.from", "is required when smtp.host is set")
		}
	}

	for _, name := range c.ObserverNames() {
		o := c.Observers[name]
		p := "observers." + name
		if !nameRE.MatchString(name) {
			add(p, "observer names may hold only letters, digits, '_' and '-'")
		}
		if o.Event != "*" {
			if !event.Type(strings.ToUpper(o.Event)).Valid() {
				add(p+".event", "%q is not one of %s, *", o.Event, event.TypeList)
			}
		}
		if o.Entity == "" {
			add(p+".entity", "must not be empty (use \"*\" for every entity)")
		}
		if len(o.Actions) == 0 {
			add(p+".actions", "an observer needs at least one action")
		}
		for i, a := range o.Actions {
			ap := Index(p+".actions", i)
			if a.Type() == "" {
				add(ap+".type", "is required")
			}
			if _, ok := a[ActionBreakerKey]; ok {
				if b, err := c.BreakerFor(a, ap); err != nil {
					errs = append(errs, err)
				} else {
					validateBreaker(add, Join(ap, ActionBreakerKey), b)
				}
			}
		}
		oneOf(p+".on_failure", o.OnFailure, "dlq", "park", "log", "drop")
		if o.OnFailure == "park" && c.DLQ.MaxEntries > 0 {
			// The cap drops the oldest entries, which a parked group's
			// head is: its events would be lost without a trace.
			add(p+".on_failure", `"park" needs dlq.max_entries = 0 (now %d): the cap would drop parked events`, c.DLQ.MaxEntries)
		}
		if o.Concurrency < 1 {
			add(p+".concurrency", "must be at least 1")
		}
		positive(p+".timeout", o.Timeout)
		r := o.Retry
		if r.MaxAttempts < 1 || r.MaxAttempts > 100 {
			add(p+".retry.max_attempts", "must be between 1 and 100, got %d", r.MaxAttempts)
		}
		oneOf(p+".retry.backoff", r.Backoff, "exponential", "linear", "fixed")
		positive(p+".retry.initial", r.Initial)
		if r.Max < r.Initial {
			add(p+".retry.max", "%s is less than retry.initial %s", r.Max, r.Initial)
		}
		if r.Jitter < 0 || r.Jitter > 1 {
			add(p+".retry.jitter", "must be between 0 and 1, got %v", r.Jitter)
		}
	}
	return errors.Join(errs...)
}

// validateBreaker checks breaker settings at path: [breaker], or an
// action's override merged onto it.
func validateBreaker(add func(path, format string, args ...any), path string, b Breaker) {
	if b.FailureRatio < 0 || b.FailureRatio > 1 || math.IsNaN(b.FailureRatio) {
		add(path+".failure_ratio", "must be between 0 (off) and 1, got %v", b.FailureRatio)
	}
	if b.ConsecutiveFailures == 0 && b.FailureRatio == 0 {
		add(path+".consecutive_failures", "is 0 and failure_ratio is 0: the breaker would never open; set one of them")
	}
	if b.FailureRatio > 0 {
		if b.MinRequests < 1 {
			add(path+".min_requests", "must be at least 1 when failure_ratio is set")
		}
		if b.Window.D() < 10*time.Millisecond || b.Window.D() > 24*time.Hour {
			add(path+".window", "%s is out of range [10ms, 24h]", b.Window)
		}
	}
	if b.OpenInterval.D() < 10*time.Millisecond || b.OpenInterval.D() > 24*time.Hour {
		add(path+".open_interval", "%s is out of range [10ms, 24h]", b.OpenInterval)
	}
	if b.FirstOpenInterval.D() < 10*time.Millisecond || b.FirstOpenInterval.D() > 24*time.Hour {
		add(path+".first_open_interval", "%s is out of range [10ms, 24h]", b.FirstOpenInterval)
	}
	if b.HalfOpenProbes < 1 || b.HalfOpenProbes > 1000 {
		add(path+".half_open_probes", "must be between 1 and 1000, got %d", b.HalfOpenProbes)
	}
}

// ObserverNames returns the observer names, sorted.
func (c *Config) ObserverNames() []string {
	names := make([]string, 0, len(c.Observers))
	for n := range c.Observers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// EnvRefs returns every "*_env" key of the config, actions included,
// with the variable it names, by key path.
func (c *Config) EnvRefs() map[string]string {
	out := map[string]string{}
	add := func(path, name string) {
		if name != "" {
			out[path] = name
		}
	}
	add("http.admin_token_env", c.HTTP.AdminTokenEnv)
	add("http.metrics_token_env", c.HTTP.MetricsTokenEnv)
	for i, t := range c.HTTP.IngestTokens {
		add(Index("http.ingest_tokens", i)+".token_env", t.TokenEnv)
		add(Index("http.ingest_tokens", i)+".secret_env", t.SecretEnv)
	}
	for i, s := range c.Sources {
		add(Index("sources", i)+".postgres_url_env", s.PostgresURLEnv)
	}
	add("postgres.url_env", c.Postgres.URLEnv)
	add("redis.url_env", c.Redis.URLEnv)
	for n, d := range c.Databases {
		add("databases."+n+".url_env", d.URLEnv)
	}
	add("smtp.username_env", c.SMTP.UsernameEnv)
	add("smtp.password_env", c.SMTP.PasswordEnv)
	for n, o := range c.Observers {
		for i, a := range o.Actions {
			for k, v := range a {
				if s, ok := v.(string); ok && strings.HasSuffix(k, "_env") {
					add(Index("observers."+n+".actions", i)+"."+k, s)
				}
			}
		}
	}
	return out
}

// CheckEnv reports every "*_env" key whose variable is unset or empty in
// lookup (os.LookupEnv when nil), leaving out what this process does not
// open: the sources, in the observe role of a topology (features) whose
// bus is not the sources' change logs.
func (c *Config) CheckEnv(lookup func(string) (string, bool), features Features) error {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	refs := c.EnvRefs()
	skipSources := c.Role == "observe" && !features.SourcesAreBus
	paths := make([]string, 0, len(refs))
	for p := range refs {
		if skipSources && strings.HasPrefix(p, "sources[") {
			continue
		}
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var errs []error
	for _, p := range paths {
		if v, ok := lookup(refs[p]); !ok || v == "" {
			errs = append(errs, Errorf(p, "environment variable %s is not set", refs[p]))
		}
	}
	return errors.Join(errs...)
}

// Secret returns the value of the variable that an *_env key names, or
// inline when the key is unset.
func Secret(inline, envName string) (string, error) {
	if envName == "" {
		return inline, nil
	}
	v, ok := os.LookupEnv(envName)
	if !ok || v == "" {
		return "", fmt.Errorf("environment variable %s is not set", envName)
	}
	return v, nil
}

// validateTracing checks [tracing] whether or not it is on, so that
// turning it on later does not reveal an old mistake.
func (c *Config) validateTracing(add func(path, format string, args ...any)) {
	t := c.Tracing
	if t.SampleRatio < 0 || t.SampleRatio > 1 {
		add("tracing.sample_ratio", "must be between 0 and 1, got %g", t.SampleRatio)
	}
	if t.ServiceName == "" {
		add("tracing.service_name", "must not be empty")
	}
	if t.Endpoint != "" {
		u, err := url.Parse(t.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("tracing.endpoint", "%q is not an http(s) URL such as \"http://127.0.0.1:4318/v1/traces\"", t.Endpoint)
		}
	}
}

// validateHTTP checks the server's address and ingest credentials. An
// address beyond loopback with ingest on and no credentials is refused:
// anyone who reaches the port could make millrace send signed webhooks,
// mail or SQL calls.
func (c *Config) validateHTTP(add func(path, format string, args ...any)) {
	h := c.HTTP
	host, _, err := net.SplitHostPort(h.Addr)
	if err != nil {
		add("http.addr", "must be host:port, got %q", h.Addr)
	} else if h.Ingest && len(h.IngestTokens) == 0 && !IsLoopback(host) {
		add("http.ingest_tokens", "http.addr %q is not a loopback address and POST /v1/events has no credentials: "+
			"add [[http.ingest_tokens]] entries, or turn ingest off with http.ingest = false", h.Addr)
	}
	if h.Console && h.AdminTokenEnv == "" {
		add("http.console", "is true but http.admin_token_env is not set: the console asks for the admin token; "+
			"set http.admin_token_env or turn the console off")
	}
	names := map[string]bool{}
	for i, t := range h.IngestTokens {
		p := Index("http.ingest_tokens", i)
		checkListName(add, p+".name", t.Name, names, "ingest token")
		if (t.TokenEnv == "") == (t.SecretEnv == "") {
			add(p, "set exactly one of token_env and secret_env")
		}
		for j, et := range t.EventTypes {
			if !event.Type(et).Valid() {
				add(Index(p+".event_types", j), "%q is not one of %s", et, event.TypeList)
			}
		}
		for j, et := range t.EntityTypes {
			if et == "" {
				add(Index(p+".entity_types", j), "must not be empty")
			}
		}
		if t.Rate != "" {
			if _, err := ParseRate(t.Rate); err != nil {
				add(p+".rate", "%v", err)
			}
		}
		if t.Burst < 0 {
			add(p+".burst", "must not be negative")
		}
	}
}

// IsLoopback reports whether host, the host part of a listen address,
// is reachable only from this machine. An empty host listens on every
// interface.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ParseRate parses a rate such as "50/s", "600/m" or "1000/h" into
// events per second.
func ParseRate(s string) (float64, error) {
	num, unit, ok := strings.Cut(s, "/")
	per := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}[unit]
	n, err := strconv.ParseFloat(num, 64)
	if !ok || per == 0 || err != nil || n <= 0 || math.IsInf(n, 0) {
		return 0, fmt.Errorf("%q must be a positive number per s, m or h, like \"50/s\"", s)
	}
	return n / per.Seconds(), nil
}

func (c *Config) validateRuntime(add func(path, format string, args ...any)) {
	if c.Runtime.GCPercent < 0 {
		add("runtime.gc_percent", "%d: must be a percentage above 0, or 0 for the topology's default", c.Runtime.GCPercent)
	}
	if c.Runtime.MemoryLimit != "" {
		if n, err := ParseSize(c.Runtime.MemoryLimit); err != nil {
			add("runtime.memory_limit", "%v", err)
		} else if n <= 0 {
			add("runtime.memory_limit", "must be greater than zero, or empty for none")
		}
	}
}
