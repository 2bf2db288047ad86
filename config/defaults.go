package config

import "time"

// Default returns a Config with every default set. It is the one place
// that defaults live; Load decodes the file and the environment onto it.
func Default() *Config {
	c := &Config{}
	c.SetDefaults()
	return c
}

// SetDefaults fills the defaults of the top level and every section.
func (c *Config) SetDefaults() {
	c.Topology = "embedded"
	c.Role = "all"
	c.Log = Log{Level: "info", Format: "auto"}
	c.HTTP = HTTP{Addr: "127.0.0.1:8080", MaxBodyBytes: 1 << 20, ReadTimeout: Duration(10 * time.Second), Ingest: true}
	c.Router = Router{ShutdownTimeout: Duration(30 * time.Second), StartupTimeout: Duration(60 * time.Second), Topic: "events", MaxInFlight: 64}
	c.Bus = Bus{Driver: DriverMillrace}
	c.Tracing = Tracing{SampleRatio: 1, ServiceName: "millrace"}
	c.Embedded = Embedded{DataDir: "data/embedded", MaxAge: Duration(168 * time.Hour), Sync: SyncAlways}
	c.NATS = NATS{
		URL: "nats://127.0.0.1:4222", Stream: "MILLRACE", SubjectPrefix: "millrace", Consumer: "millrace",
		AckWait: Duration(30 * time.Second), MaxDeliver: -1, MaxAge: Duration(168 * time.Hour), Replicas: 1,
		PartitionTTL: Duration(10 * time.Second),
	}
	c.Postgres = Postgres{Group: "millrace", Schema: "millrace"}
	c.Redis = Redis{KeyPrefix: "millrace:", MaxLen: 1_000_000, ClaimIdle: Duration(30 * time.Second), Group: "millrace",
		PartitionTTL: Duration(10 * time.Second), WaitTimeout: Duration(time.Second)}
	c.Dedup = Dedup{Enabled: true, Window: Duration(5 * time.Minute), Lease: Duration(30 * time.Second)}
	c.Cache = Cache{Enabled: true, TTL: Duration(60 * time.Second)}
	c.Delivery = Delivery{MaxConcurrency: 64, Adaptive: true, ProbeAfter: Duration(30 * time.Second)}
	c.Breaker = Breaker{ConsecutiveFailures: 5, MinRequests: 10, Window: Duration(time.Minute),
		FirstOpenInterval: Duration(time.Second), OpenInterval: Duration(30 * time.Second), HalfOpenProbes: 1}
	c.SMTP = SMTP{Port: 587, TLS: "starttls", Timeout: Duration(30 * time.Second)}
}

// SetDefaults fills the defaults of a source.
func (s *Source) SetDefaults() {
	s.PollInterval = Duration(100 * time.Millisecond)
	s.BatchSize = 500
	s.Schema = "millrace"
	s.Mode = "millrace"
	s.Capture = CaptureTrigger
	s.MaxRetainedWAL = "1GB"
	s.ReplicaIdentity = "full"
}

// SetDefaults fills the defaults of an observer.
func (o *Observer) SetDefaults() {
	o.Event = "*"
	o.Entity = "*"
	o.OnFailure = "dlq"
	o.Concurrency = 4
	o.Timeout = Duration(30 * time.Second)
	o.Retry.SetDefaults()
}

// SetDefaults fills the defaults of a retry policy: 3 attempts,
// exponential from 100ms to 30s, ±25 % jitter.
func (r *Retry) SetDefaults() {
	*r = Retry{MaxAttempts: 3, Backoff: "exponential", Initial: Duration(100 * time.Millisecond), Max: Duration(30 * time.Second), Jitter: 0.25}
}
