// Package sqlbus is the "sql" topology of examples/custom-bus: the
// embedded topology (its dead letters, dedup ledger and result cache)
// with its bus replaced, through topologies.WithBus, by watermill-sql's
// Pub/Sub on PostgreSQL: one table per topic in postgres.schema, read in
// the consumer group postgres.group. It shows how any Watermill
// Publisher and Subscriber pair becomes millrace's bus.
package sqlbus
