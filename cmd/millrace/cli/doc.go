// Package cli is the millrace command line: run, validate, config, emit,
// migrate, watch, unwatch, dlq and version. It is importable so that a
// custom binary can add its own action types to Defaults() and call
// Main. The benchmark suite is a command of its own, cmd/millrace-bench.
package cli
