// Package fault holds the fault tests: Redis down, a NATS server
// restarted, the capture's PostgreSQL connections killed, a webhook
// endpoint that times out, and a service unreachable or late at
// start-up, each on the topologies it applies to, with millrace as a
// real process (see docs/testing.md).
package fault
