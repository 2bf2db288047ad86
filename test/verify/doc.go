// Package verify runs `millrace verify --short` against the test
// services on every topology the binary registers, and on nats with WAL
// capture (on a PostgreSQL of its own with wal_level = logical), in
// parallel: every scenario that runs must end with nothing lost,
// duplicated or reordered, and the scratch schema, streams and keys must
// be gone afterwards (docs/verify.md).
package verify
