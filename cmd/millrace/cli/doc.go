// Package cli is the millrace command line: run, validate, config, emit
// and version. It is importable so that a custom binary can add its own
// action types to Defaults() and call Main.
package cli
