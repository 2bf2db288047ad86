// Package conformance holds the conformance suite: scenarios written
// once and run against every topology the millrace binary registers,
// each with millrace as a real process started from the topology's
// example config (see internal/e2e and docs/testing.md).
package conformance
