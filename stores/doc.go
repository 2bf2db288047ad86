// Package stores holds the back-ends the delivery middleware keeps its
// state in, and their interfaces: the dedup ledger and the result cache
// (DedupStore, ResultCache; memory, Redis, PostgreSQL, opened with Open)
// and the durable dead-letter store (DeadLetters; Redis, PostgreSQL,
// JetStream). Each store coalesces concurrent calls into shared round
// trips (batcher.go) and is checked by one conformance suite per
// interface against the real service.
package stores
