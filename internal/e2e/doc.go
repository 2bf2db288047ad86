// Package e2e runs millrace as a real process against the real services,
// for the end-to-end suites under test/ (conformance, crash, fault,
// badinput).
//
// It builds the millrace binary once per test binary ([Main], [Binary]),
// starts it from a topology's example config (topologies/<name>.toml)
// pointed at the test's own PostgreSQL schema, Redis key prefix, NATS
// stream and HTTP port through MILLRACE_ environment overrides ([NewRig]),
// produces row changes the way the topology takes them (rows in a watched
// table when the topology captures, HTTP ingest otherwise), and records
// what the webhook actions deliver ([Receiver]), checking every Standard
// Webhooks signature. [Proxy] puts a TCP proxy of the test between
// millrace and a shared service, to make the service appear late or
// vanish without touching the server ([Options].Reroute).
//
// The child binary is built without the race detector, so that the heavy
// loads stay within the CI budget; MILLRACE_E2E_RACE=1 builds it with
// -race.
package e2e
