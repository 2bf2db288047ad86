package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Stores lists the values of dedup.store and cache.store; "" is the
// topology's default store.
var Stores = []string{"", "memory", "redis", "postgres"}

// Config is the whole millrace configuration file.
type Config struct {
	// Topology picks the bus and stores: the name of a topology
	// registered in the binary (topologies.Registry), which also checks
	// the sections it uses. Built in: embedded (default), postgres,
	// redis, nats and multidb.
	Topology string `koanf:"topology"`
	// Role is what this process runs: all (default), capture or observe.
	Role string `koanf:"role"`

	Log       Log                 `koanf:"log"`
	HTTP      HTTP                `koanf:"http"`
	Router    Router              `koanf:"router"`
	Bus       Bus                 `koanf:"bus"`
	Embedded  Embedded            `koanf:"embedded"`
	Sources   []Source            `koanf:"sources"`
	Postgres  Postgres            `koanf:"postgres"`
	NATS      NATS                `koanf:"nats"`
	Redis     Redis               `koanf:"redis"`
	Dedup     Dedup               `koanf:"dedup"`
	Cache     Cache               `koanf:"cache"`
	DLQ       DLQ                 `koanf:"dlq"`
	Delivery  Delivery            `koanf:"delivery"`
	Breaker   Breaker             `koanf:"breaker"`
	Databases map[string]Database `koanf:"databases"`
	SMTP      SMTP                `koanf:"smtp"`
	Tracing   Tracing             `koanf:"tracing"`
	Runtime   Runtime             `koanf:"runtime"`
	Observers map[string]Observer `koanf:"observers"`
}

// Runtime tunes the Go runtime of the process that runs millrace. The
// environment variables GOGC and GOMEMLIMIT, when set, take precedence,
// as they do for any Go program.
type Runtime struct {
	// GCPercent is the garbage collector's target, Go's GOGC: a
	// collection starts once the heap has grown by this percentage of
	// what the last one left live. Default 0: the topology's, 400 on
	// redis, nats and multidb, whose live heap is small and which
	// otherwise collect it several times a second, 50 on embedded, whose
	// heap is mostly the in-process JetStream server's block caches, and
	// Go's 100 on postgres (docs/performance.md, "Garbage collection").
	GCPercent int `koanf:"gc_percent"`
	// MemoryLimit is a soft limit on the memory the Go runtime uses,
	// Go's GOMEMLIMIT, e.g. "512MB": near it the collector runs more
	// often, whatever gc_percent says. Empty (default): none.
	MemoryLimit string `koanf:"memory_limit"`
}

// Tracing sends OpenTelemetry spans of each event's way (capture, bus,
// observers, actions) to an OTLP/HTTP collector. Off by default, and
// then it costs nothing: no span is made.
type Tracing struct {
	// Enabled turns tracing on. Default false.
	Enabled bool `koanf:"enabled"`
	// Endpoint is the collector's OTLP/HTTP traces URL, e.g.
	// "http://127.0.0.1:4318/v1/traces". Empty: the SDK's default
	// (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT,
	// else http://localhost:4318/v1/traces).
	Endpoint string `koanf:"endpoint"`
	// SampleRatio is the share of new traces kept, from 0 to 1. A trace
	// started upstream (an incoming traceparent) keeps its own decision.
	// Default 1.
	SampleRatio float64 `koanf:"sample_ratio"`
	// ServiceName is the service.name resource attribute. Default
	// "millrace".
	ServiceName string `koanf:"service_name"`
}

// Log sets up logging.
type Log struct {
	// Level is debug, info (default), warn or error.
	Level string `koanf:"level"`
	// Format is auto (default: text on a terminal, JSON otherwise), text or json.
	Format string `koanf:"format"`
}

// HTTP is the server for ingest, health, metrics and admin.
type HTTP struct {
	// Addr is the listen address. Default "127.0.0.1:8080".
	Addr string `koanf:"addr"`
	// MaxBodyBytes caps the body of POST /v1/events. Default 1 MiB.
	MaxBodyBytes int64 `koanf:"max_body_bytes"`
	// AdminTokenEnv names the variable holding the bearer token of the
	// admin endpoints (/v1/dlq). Unset: the admin endpoints are off.
	AdminTokenEnv string `koanf:"admin_token_env"`
	// ReadTimeout bounds reading one request. Default 10s.
	ReadTimeout Duration `koanf:"read_timeout"`
	// Ingest serves POST /v1/events. Default true; false removes the
	// route, for processes that only capture or observe.
	Ingest bool `koanf:"ingest"`
	// IngestTokens are the credentials POST /v1/events accepts. Without
	// any, ingest takes every request, which millrace allows only when
	// Addr is a loopback address.
	IngestTokens []IngestToken `koanf:"ingest_tokens"`
	// MetricsTokenEnv, when set, names the variable holding the bearer
	// token that GET /metrics asks for. Unset: /metrics is open, like
	// /healthz and /readyz.
	MetricsTokenEnv string `koanf:"metrics_token_env"`
	// Console serves the admin console, a web UI, under /console/. It
	// asks for the admin token (AdminTokenEnv), so it needs that key.
	// Default false: the routes do not exist.
	Console bool `koanf:"console"`
}

// IngestToken is one producer's credential for POST /v1/events: a bearer
// token, or a Standard Webhooks signing secret for producers that sign
// their requests. Its name travels with the events it let in (message
// metadata) and labels the ingest metrics and logs.
type IngestToken struct {
	// Name identifies the producer. Required, unique.
	Name string `koanf:"name"`
	// TokenEnv names the variable holding the bearer token
	// ("Authorization: Bearer <token>").
	TokenEnv string `koanf:"token_env"`
	// SecretEnv names the variable holding a Standard Webhooks signing
	// secret ("whsec_<base64>" or raw): the request must carry
	// webhook-id, webhook-timestamp and webhook-signature headers. Set
	// exactly one of TokenEnv and SecretEnv.
	SecretEnv string `koanf:"secret_env"`
	// EntityTypes and EventTypes, when set, are the only entity and event
	// types the producer may send; other events are refused (403).
	EntityTypes []string `koanf:"entity_types"`
	EventTypes  []string `koanf:"event_types"`
	// Source, when set, is the only source the producer may name; its
	// events without a source get this one.
	Source string `koanf:"source"`
	// Rate caps the producer's requests, "N/s", "N/m" or "N/h"; over it
	// the answer is 429. Empty: no cap.
	Rate string `koanf:"rate"`
	// Burst is how many requests may come at once within Rate. Default:
	// one second's worth of Rate, at least 1.
	Burst int `koanf:"burst"`
}

// Router tunes the Watermill router.
type Router struct {
	// ShutdownTimeout bounds the drain of in-flight messages on SIGINT or
	// SIGTERM. Default 30s.
	ShutdownTimeout Duration `koanf:"shutdown_timeout"`
	// StartupTimeout is how long millrace waits at start for the services
	// the config names (PostgreSQL, Redis, NATS) to answer, retrying with
	// backoff, before it exits with status 2; 0 fails at once. Default 60s.
	StartupTimeout Duration `koanf:"startup_timeout"`
	// Topic is the bus topic that carries change events. Default "events".
	Topic string `koanf:"topic"`
	// MaxInFlight bounds the events handled at once by one process; events
	// of one entity are always handled one after another. Default 64.
	MaxInFlight int `koanf:"max_in_flight"`
	// MaxBuffered bounds the events one process holds at once, in flight
	// or waiting their turn: the bus's read-ahead. Tenants take turns at
	// the in-flight slots and at each endpoint among the events held, so
	// a tenant's burst larger than this fills it and the events behind
	// the burst on the bus wait until it drains (docs/actions.md).
	// Default 0: 16 × max_in_flight.
	MaxBuffered int `koanf:"max_buffered"`
}

// Bus picks the implementation of the topology's bus.
type Bus struct {
	// Driver is "millrace" (default), the topology's own bus (per-entity
	// lanes, delayed redelivery, partitions), or "watermill", the
	// upstream Watermill Pub/Sub of the same broker built from the same
	// keys: watermill-nats/v2 on the embedded, nats and multidb
	// topologies, watermill-redisstream on the redis topology. The
	// topology refuses a driver it has not. docs/drivers.md lists what
	// each keeps.
	Driver string `koanf:"driver"`
}

// Bus drivers (bus.driver).
const (
	DriverMillrace  = "millrace"
	DriverWatermill = "watermill"
)

// Embedded configures the in-process NATS JetStream server.
type Embedded struct {
	// DataDir holds the JetStream store. Default "data/embedded".
	DataDir string `koanf:"data_dir"`
	// Port is the loopback port of the server; 0 (default) picks a free one.
	Port int `koanf:"port"`
	// MaxAge is how long the stream keeps events. Default 168h.
	MaxAge Duration `koanf:"max_age"`
	// Sync is when the server forces what it stored to disk (fsync):
	// "always" (default), before it acknowledges each write, so an
	// acknowledged event survives a power loss; or a duration such as
	// "2m" (NATS's own default), every that often in the background, so
	// a crash of the host (power loss, kernel panic) may lose the events
	// acknowledged in the last interval. A crash of the process alone
	// loses nothing either way: the writes are in the operating system's
	// cache. See ParseSync.
	Sync string `koanf:"sync"`
}

// SyncAlways is the value of embedded.sync that forces every write to
// disk before it is acknowledged.
const SyncAlways = "always"

// ParseSync reads a value of embedded.sync: "always" (always true), or a
// duration between 1ms and 24h, the interval of the server's background
// fsync.
func ParseSync(s string) (always bool, interval time.Duration, err error) {
	if s == SyncAlways {
		return true, 0, nil
	}
	d, perr := time.ParseDuration(s)
	switch {
	case perr != nil:
		return false, 0, fmt.Errorf("%q is not %q or a duration such as \"2m\"", s, SyncAlways)
	case d < time.Millisecond || d > 24*time.Hour:
		return false, 0, fmt.Errorf("%s is out of range [1ms, 24h] (or %q)", d, SyncAlways)
	}
	return false, d, nil
}

// Source is one PostgreSQL database whose changes are captured.
type Source struct {
	// Name identifies the source in events and subjects. Required.
	Name string `koanf:"name"`
	// PostgresURL is the connection URL; prefer PostgresURLEnv for URLs
	// with passwords.
	PostgresURL string `koanf:"postgres_url"`
	// PostgresURLEnv names the variable holding the connection URL.
	PostgresURLEnv string `koanf:"postgres_url_env"`
	// Tables are the watched tables, "schema.table".
	Tables []string `koanf:"tables"`
	// Entities maps a table to its entity type. Default: the table name.
	Entities map[string]string `koanf:"entities"`
	// PollInterval is the polling base of the capture reader. Default 100ms.
	PollInterval Duration `koanf:"poll_interval"`
	// BatchSize is the number of changes read at once. Default 500.
	BatchSize int `koanf:"batch_size"`
	// Install creates the schema and triggers at start. Default false.
	Install bool `koanf:"install"`
	// Schema holds millrace's change log, checkpoints and trigger
	// functions in this database. Default "millrace".
	Schema string `koanf:"schema"`
	// Mode is millrace (default: millrace's own change log, filled by the
	// triggers that watch installs) or fraiseql (read an existing
	// core.tb_entity_change_log; tables may name another table).
	Mode string `koanf:"mode"`
	// Notify wakes the capture reader with LISTEN/NOTIFY, one
	// notification per statement, on top of polling. Default false: a
	// transaction that notifies takes a global lock at commit.
	Notify bool `koanf:"notify"`
	// Capture is how changes are captured: trigger (default: a row
	// trigger appends each change to the change log, which is read) or
	// wal (logical replication: the write-ahead log is decoded with
	// pgoutput through a replication slot; no trigger). It is a key of
	// its own, not a value of mode: mode names the change log that is
	// read, capture how the changes get out of the database.
	Capture string `koanf:"capture"`
	// Slot is the logical replication slot of capture = "wal". Default
	// "millrace_<name>" (lower case, other characters as '_').
	Slot string `koanf:"slot"`
	// Publication is the publication of the watched tables with capture
	// = "wal". Default "millrace_<name>", as Slot.
	Publication string `koanf:"publication"`
	// MaxRetainedWAL is the WAL the slot may hold back before millrace
	// warns (log and the millrace_capture_wal_retained_bytes gauge),
	// e.g. "1GB", "512MB". Default "1GB".
	MaxRetainedWAL string `koanf:"max_retained_wal"`
	// ReplicaIdentity is what watch sets on the watched tables with
	// capture = "wal": full (default: the old row is logged in full, so
	// UPDATE has changes and DELETE the whole before-image, as with the
	// trigger) or keep (leave the table's setting; UPDATE then has no
	// changes and DELETE only the key columns).
	ReplicaIdentity string `koanf:"replica_identity"`
}

// Capture modes of a source (Source.Capture).
const (
	CaptureTrigger = "trigger"
	CaptureWAL     = "wal"
)

// SlotName is s.Slot, or its default from the source's name.
func (s Source) SlotName() string {
	if s.Slot != "" {
		return s.Slot
	}
	return "millrace_" + replicationName(s.Name)
}

// PublicationName is s.Publication, or its default from the source's name.
func (s Source) PublicationName() string {
	if s.Publication != "" {
		return s.Publication
	}
	return "millrace_" + replicationName(s.Name)
}

// replicationName turns a source name into what slot names allow: lower
// case letters, digits and '_'.
func replicationName(name string) string {
	b := []byte(strings.ToLower(name))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) > 54 {
		b = b[:54]
	}
	return string(b)
}

// ParseSize reads a size such as "1GB", "512MB", "64kB" or "1048576"
// (bytes); units are powers of 1024, as in PostgreSQL's settings.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("%q is not a size (e.g. 1GB, 512MB)", s)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size: %w", s, err)
	}
	mult := map[string]int64{"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[strings.ToUpper(strings.TrimSpace(t[i:]))]
	if mult == 0 {
		return 0, fmt.Errorf("%q: unit must be B, kB, MB, GB or TB", s)
	}
	return n * mult, nil
}

// Postgres is the database of the postgres topology's stores (dedup
// ledger, result cache, dead letters), and of its bus when there is no
// [[sources]] entry; also the database of dedup.store = "postgres".
type Postgres struct {
	// URL is the connection URL; prefer URLEnv for URLs with passwords.
	// On the postgres topology it defaults to the first source's.
	URL    string `koanf:"url"`
	URLEnv string `koanf:"url_env"`
	// Group is the consumer group the postgres topology's observers read
	// the change logs with; one process per group reads at a time, the
	// others stand by. Default "millrace".
	Group string `koanf:"group"`
	// Schema holds the change log of postgres.url's database on the
	// postgres topology when there is no [[sources]] entry (events then
	// come from HTTP ingest and the publish action). Default "millrace".
	Schema string `koanf:"schema"`
}

// NATS is the JetStream bus of the nats and multidb topologies.
type NATS struct {
	// URL of the NATS server(s). Default "nats://127.0.0.1:4222".
	URL string `koanf:"url"`
	// Stream is the JetStream stream name. Default "MILLRACE".
	Stream string `koanf:"stream"`
	// SubjectPrefix starts every subject. Default "millrace".
	SubjectPrefix string `koanf:"subject_prefix"`
	// Consumer is the durable consumer shared by the workers. Default "millrace".
	Consumer string `koanf:"consumer"`
	// AckWait is the server-side redelivery timer. Default 30s.
	AckWait Duration `koanf:"ack_wait"`
	// MaxDeliver bounds deliveries of one message; -1 (default) is unlimited.
	MaxDeliver int `koanf:"max_deliver"`
	// MaxAge is the stream's retention. Default 168h.
	MaxAge Duration `koanf:"max_age"`
	// Replicas is the stream's replica count. Default 1.
	Replicas int `koanf:"replicas"`
	// Partitions, when > 0, splits the events by entity into that many
	// partitions, each read by one worker process at a time, so that an
	// entity's events stay in order across several workers. Default 0:
	// one consumer shared by every worker (order per entity within each
	// worker only). Every process of one stream must use the same value.
	Partitions int `koanf:"partitions"`
	// PartitionTTL is how long a dead worker's partitions wait before
	// another worker takes them over. Default 10s.
	PartitionTTL Duration `koanf:"partition_ttl"`
}

// Redis is the Redis server of the redis topology and of the nats and
// multidb stores.
type Redis struct {
	// URL, e.g. "redis://127.0.0.1:6379/0"; prefer URLEnv for passwords.
	URL    string `koanf:"url"`
	URLEnv string `koanf:"url_env"`
	// KeyPrefix starts every key millrace writes. Default "millrace:".
	KeyPrefix string `koanf:"key_prefix"`
	// MaxLen caps the event stream (MAXLEN ~). Default 1000000.
	MaxLen int64 `koanf:"max_len"`
	// ClaimIdle is how long an entry may stay pending on a dead worker
	// before a live one claims it. Default 30s.
	ClaimIdle Duration `koanf:"claim_idle"`
	// Group is the consumer group the redis topology's workers share.
	// Default "millrace".
	Group string `koanf:"group"`
	// Consumer names this process in the group. Default
	// "<hostname>-<pid>"; set a name that survives restarts (a pod name)
	// to get a restarted worker's pending entries back at once instead
	// of after claim_idle. Two live processes must not share it.
	Consumer string `koanf:"consumer"`
	// Partitions, when > 0, splits the events by entity into that many
	// streams, each read by one worker process at a time, so that an
	// entity's events stay in order across several workers. Default 0:
	// one stream and group shared by every worker (order per entity
	// within each worker only). Every process must use the same value.
	Partitions int `koanf:"partitions"`
	// PartitionTTL is how long a dead worker's partitions wait before
	// another worker takes them over. Default 10s.
	PartitionTTL Duration `koanf:"partition_ttl"`
	// WaitReplicas, on the redis topology, is how many replicas must
	// hold an event (Redis WAIT) before its publish counts as done and
	// the capture moves past it. Redis replicates asynchronously: with
	// 0 (the default) a failover (Sentinel) may lose the events the
	// old primary acknowledged last; 1 with one replica keeps them.
	WaitReplicas int `koanf:"wait_replicas"`
	// WaitTimeout bounds one WAIT; a publish whose events fewer than
	// WaitReplicas replicas acknowledged in time fails and is retried.
	// Default 1s, at most 2s.
	WaitTimeout Duration `koanf:"wait_timeout"`
}

// Dedup is the per event and observer dedup window.
type Dedup struct {
	// Enabled turns dedup on (default true).
	Enabled bool `koanf:"enabled"`
	// Window is how long a processed event id is remembered. Default 5m,
	// between 1s and 1h.
	Window Duration `koanf:"window"`
	// Lease is how long a claim of an event outlives the process that
	// holds it: a copy delivered elsewhere waits for it, and after a
	// crash the event runs again once it ran out. It is renewed every
	// lease/3 while the observer runs. Default 30s, between 1s and 10m.
	Lease Duration `koanf:"lease"`
	// Store is where the ledger lives: "" (default) is the topology's
	// own (in memory for embedded), or memory, redis ([redis] section) or
	// postgres ([postgres] section). Processes that share a bus must
	// share this store for dedup to hold across them.
	Store string `koanf:"store"`
}

// Cache is the per event and action result cache.
type Cache struct {
	// Enabled turns the result cache on (default true).
	Enabled bool `koanf:"enabled"`
	// TTL is how long a success is remembered. Default 60s, between 1s and 1h.
	TTL Duration `koanf:"ttl"`
	// Store is where the cache lives: "" (default) is the topology's own,
	// or memory, redis or postgres, as for dedup.store.
	Store string `koanf:"store"`
}

// Delivery bounds the requests to each action endpoint: a webhook's or
// Slack's scheme://host[:port], an SMTP server, a database, a Redis
// server (docs/actions.md, "Delivery limits").
type Delivery struct {
	// MaxConcurrency caps the requests in flight to one endpoint.
	// Default 64.
	MaxConcurrency int `koanf:"max_concurrency"`
	// Adaptive halves an endpoint's limit when it answers 429 or 503 or
	// times out, and raises it back with its successes. Default true.
	Adaptive bool `koanf:"adaptive"`
	// ProbeAfter is how long an adaptive limit stays below the
	// concurrency at which the endpoint last refused a request before it
	// tries more again. Default 30s, between 1s and 1h.
	ProbeAfter Duration `koanf:"probe_after"`
	// Endpoints override the defaults for named endpoints.
	Endpoints []EndpointLimit `koanf:"endpoints"`
}

// EndpointLimit is one endpoint's delivery limit.
type EndpointLimit struct {
	// Endpoint is the endpoint's name as millrace labels it in
	// millrace_endpoint_* and millrace_breaker_state:
	// "https://hooks.example.com", "http://10.0.0.5:8080",
	// "smtp://mail.example.com:587".
	Endpoint string `koanf:"endpoint"`
	// MaxConcurrency, when set, caps this endpoint instead of
	// delivery.max_concurrency.
	MaxConcurrency int `koanf:"max_concurrency"`
	// Rate is the most requests per second, minute or hour the endpoint
	// gets: "50/s", "600/m", "1000/h". Empty: no rate.
	Rate string `koanf:"rate"`
	// Burst is how many requests may start at once within the rate.
	// Default 1.
	Burst int `koanf:"burst"`
}

// Breaker tunes the circuit breaker of each action endpoint. The
// [breaker] section holds the defaults; an action's own "breaker" table
// overrides some of them for that action's endpoint (BreakerFor).
type Breaker struct {
	// ConsecutiveFailures opens a breaker after this many transient
	// failures in a row; 0 turns the rule off. Default 5.
	ConsecutiveFailures uint32 `koanf:"consecutive_failures"`
	// FailureRatio, when above 0, also opens a breaker once this share
	// of the calls of the last Window failed, counted from MinRequests
	// calls on. Default 0 (off).
	FailureRatio float64 `koanf:"failure_ratio"`
	// MinRequests is how many calls the window needs before
	// FailureRatio applies. Default 10.
	MinRequests uint32 `koanf:"min_requests"`
	// Window is the rolling window FailureRatio counts over. Default 60s.
	Window Duration `koanf:"window"`
	// FirstOpenInterval is how long a breaker refuses calls the first
	// time it opens before it lets probes through (half-open); each
	// failed probe doubles it, up to OpenInterval, and a successful one
	// starts over. A short first interval finds an endpoint that is back
	// within about that long after a short outage; the doubling keeps a
	// long outage probed rarely. Capped by OpenInterval. Default 1s.
	FirstOpenInterval Duration `koanf:"first_open_interval"`
	// OpenInterval is the longest an open breaker refuses calls before
	// it lets probes through. Default 30s.
	OpenInterval Duration `koanf:"open_interval"`
	// HalfOpenProbes is how many calls a half-open breaker lets through;
	// that many successes close it, one failure opens it again. Default 1.
	HalfOpenProbes uint32 `koanf:"half_open_probes"`
}

// ActionBreakerKey is the key of an action's section that overrides
// [breaker] for the action's endpoint. It is not one of the action
// type's own fields.
const ActionBreakerKey = "breaker"

// BreakerFor returns the breaker settings of action a at path: [breaker]
// with a's own "breaker" table on top. The error names the keys at path.
func (c *Config) BreakerFor(a Action, path string) (Breaker, error) {
	b := c.Breaker
	raw, ok := a[ActionBreakerKey]
	if !ok {
		return b, nil
	}
	m, ok := raw.(map[string]any)
	if !ok {
		return b, Errorf(Join(path, ActionBreakerKey), "must be a table, got %s", describe(raw))
	}
	if err := Decode(m, &b, Join(path, ActionBreakerKey)); err != nil {
		return b, err
	}
	return b, nil
}

// DLQ is the dead-letter store.
type DLQ struct {
	// MaxEntries caps the store; 0 (default) keeps everything.
	MaxEntries int `koanf:"max_entries"`
}

// Database is a named PostgreSQL connection for the sql action.
type Database struct {
	URL    string `koanf:"url"`
	URLEnv string `koanf:"url_env"`
}

// SMTP is the mail server of the email action.
type SMTP struct {
	Host string `koanf:"host"`
	// Port defaults to 587.
	Port int    `koanf:"port"`
	From string `koanf:"from"`
	// UsernameEnv and PasswordEnv name the variables holding credentials.
	UsernameEnv string `koanf:"username_env"`
	PasswordEnv string `koanf:"password_env"`
	// TLS is starttls (default), tls or none.
	TLS string `koanf:"tls"`
	// Timeout bounds one send. Default 30s.
	Timeout Duration `koanf:"timeout"`
}

// Observer is a named rule: which events, an optional condition, and the
// actions to run.
type Observer struct {
	// Event is INSERT, UPDATE, DELETE, CUSTOM, READ (rows emitted by
	// millrace backfill) or "*" (default: every type, READ included).
	Event string `koanf:"event"`
	// Entity is an entity type or "*" (default).
	Entity string `koanf:"entity"`
	// Condition is an expression over the event; empty matches all.
	Condition string `koanf:"condition"`
	// Actions run in order of the list, concurrently up to Concurrency.
	Actions []Action `koanf:"actions"`
	// Retry is the retry policy for transient failures.
	Retry Retry `koanf:"retry"`
	// OnFailure is what happens after a permanent failure or the last
	// attempt: dlq (default), park, log or drop. "park" dead-letters the
	// event and parks its entity for the observer: the entity's later
	// events wait behind it in the dead-letter store, in order, until
	// `millrace dlq replay --entity` (docs/dead-letters.md).
	OnFailure string `koanf:"on_failure"`
	// Concurrency bounds the actions of one event run at once. Default 4.
	Concurrency int `koanf:"concurrency"`
	// Timeout bounds one action. Default 30s.
	Timeout Duration `koanf:"timeout"`
}

// Action is one action's section: its "type" plus the fields that type
// declares. The handler registry decodes it (see handlers.Register).
type Action map[string]any

// Type returns the action's type name.
func (a Action) Type() string {
	s, _ := a["type"].(string)
	return s
}

// Retry is a retry policy.
type Retry struct {
	// MaxAttempts counts every attempt, the first included. Default 3.
	MaxAttempts int `koanf:"max_attempts"`
	// Backoff is exponential (default), linear or fixed.
	Backoff string `koanf:"backoff"`
	// Initial is the first delay. Default 100ms.
	Initial Duration `koanf:"initial"`
	// Max caps the delay. Default 30s.
	Max Duration `koanf:"max"`
	// Jitter is the random spread around each delay, 0..1. Default 0.25.
	Jitter float64 `koanf:"jitter"`
}

// Delay returns the wait before attempt n+1, after n failed attempts
// (n >= 1), without jitter.
func (r Retry) Delay(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	var d time.Duration
	switch r.Backoff {
	case "fixed":
		d = r.Initial.D()
	case "linear":
		d = time.Duration(n) * r.Initial.D()
	default:
		d = r.Initial.D()
		for i := 1; i < n && d < r.Max.D(); i++ {
			d *= 2
		}
	}
	return min(d, r.Max.D())
}

// EventMatches reports whether the observer's event key matches t.
func (o Observer) EventMatches(t string) bool {
	return o.Event == "*" || strings.EqualFold(o.Event, t)
}
