// Package middleware holds what sits between the bus and the actions to
// make delivery safe: the dedup ledger, the result cache, retries, the
// dead-letter store and the circuit breaker, and the stores behind them
// (memory, Redis, PostgreSQL, JetStream).
package middleware
