-- Backfills: READ events for rows that existed before capture, and the
-- cursor of each backfill so that a stopped one resumes where it was.

-- The rows already there passed the narrower check: NOT VALID spares a
-- scan of the change log under the exclusive lock, which would hold up
-- every watched table's writers.
ALTER TABLE {{schema}}.change_log DROP CONSTRAINT change_log_op_check,
	ADD CONSTRAINT change_log_op_check CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'CUSTOM', 'READ')) NOT VALID;

-- One row per (source, table, filter, observer): cursor is the primary
-- key of the last row emitted, as a JSON object, advanced in the
-- transaction that emitted its page; run_id seeds the event ids of one
-- run (see bus/backfill).
CREATE TABLE {{schema}}.backfills (
	source       text        NOT NULL,
	source_table text        NOT NULL,
	filter       text        NOT NULL DEFAULT '',
	observer     text        NOT NULL DEFAULT '',
	run_id       uuid        NOT NULL DEFAULT gen_random_uuid(),
	cursor       jsonb,
	rows         bigint      NOT NULL DEFAULT 0,
	started_at   timestamptz NOT NULL DEFAULT now(),
	updated_at   timestamptz NOT NULL DEFAULT now(),
	finished_at  timestamptz,
	PRIMARY KEY (source, source_table, filter, observer)
);
