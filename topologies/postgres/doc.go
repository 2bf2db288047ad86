// Package postgres is the "postgres" topology, PostgreSQL only: the
// change log of each [[sources]] database is the bus. Observers read it
// through capture.Subscriber for the consumer group postgres.group (one
// reader per source and group across processes, the others stand by),
// HTTP ingest and the publish action append to the first source's change
// log, and the dedup ledger, result cache and dead letters are tables in
// postgres.url's database (default: the first source's).
//
// Topology is the registry entry: Validate checks the [postgres] section
// and that there is a change log to read, and Features declares durable
// dead letters only: the change log carries router.topic and no other
// topic, so the publish action cannot publish elsewhere.
//
// Its sources are opened with topologies.OpenSources, which the other
// topologies that capture from PostgreSQL use too.
package postgres
