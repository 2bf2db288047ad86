// Package wal captures the row changes of a PostgreSQL database from its
// write-ahead log: logical replication through a slot with the pgoutput
// plugin, decoded with github.com/jackc/pglogrepl, into the same event
// envelope as the trigger capture of bus/capture, with no trigger and no
// second write in the user's transaction.
//
// Setup (millrace migrate/watch) creates the publication of the watched
// tables and the slot; Unpublish (unwatch) drops them. Subscriber streams
// the slot: events in commit order per entity, ids derived from the
// commit LSN and the position in the transaction, and the slot's
// confirmed position moved only over transactions the bus acked. Rows
// sent with pg_logical_emit_message(true, 'millrace.backfill', ...)
// become READ events. docs/capture.md compares the two capture modes.
package wal
