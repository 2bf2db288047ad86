// Package router runs one millrace process: it builds the topology's bus
// and stores, the one Watermill router with its capture and observe
// handlers, and the HTTP server (ingest with its credentials, health,
// metrics, the dead-letter admin API). The observe handler decodes and
// matches each event and hands it to each matching observer's delivery
// stack; the delivery policy itself (dedup, result cache, retries,
// circuit breakers, failure policy) is package middleware's.
//
// Check validates a loaded config against the registries: the topology
// and its own checks, then the actions with the topology's features. It
// is what `millrace validate` adds to config.Load; New runs it too.
package router
