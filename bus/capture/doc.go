// Package capture turns the row changes of a PostgreSQL database into
// Watermill messages.
//
// Migrate creates a schema (default "millrace") holding the change log,
// the checkpoints of its readers and the capture trigger function; Watch
// puts the trigger on tables, so that every INSERT, UPDATE and DELETE
// appends one row with the after- and before-images, the entity type and
// id, and the user and tenant taken from the session settings
// millrace.user_id and millrace.tenant_id. Publisher appends events that
// do not come from a table (HTTP ingest, the publish action).
//
// Subscriber reads the change log for a consumer group: late-commit safe
// (a transaction that took its position before, and committed after, a
// row that was read is still read), in commit order per row, with a
// durable checkpoint that only moves over acked messages, and with one
// reader per (source, group) across processes, held by a PostgreSQL
// advisory lock. docs/capture.md describes the design and its limits.
//
// In FraiseQL mode the Subscriber reads an existing
// core.tb_entity_change_log instead of millrace's own change log.
package capture
