// Package multidb is the "multidb" topology: the nats topology fed by
// several PostgreSQL databases. Each [[sources]] entry has its own
// connection, capture lease, checkpoint and subject segment
// (<subject_prefix>.<topic>.<source>.<entity>.<op>); one pool of
// observer workers, on one durable consumer, serves them all, and events
// of one (source, entity type, entity id) stay in commit order.
//
// Topology is the registry entry: the nats topology's checks and
// features, and at least one [[sources]] entry.
package multidb
