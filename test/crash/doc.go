// Package crash holds the crash test: a run of at least 10,000 changes
// during which the millrace process is killed with SIGKILL at random
// moments and restarted, on every topology the binary registers. Nothing
// may be lost, and every duplicate delivery must carry the idempotency
// key of the first (see docs/testing.md).
package crash
