-- The change log, its checkpoints and the capture trigger function.
-- {{schema}} is replaced by the quoted schema name.

-- Positions come from this sequence through next_position(), which makes
-- sure the writing transaction has its xid before it takes a position:
-- the reader relies on that to tell a position still held by a running
-- transaction from one that will never be filled (see reader.go).
CREATE SEQUENCE {{schema}}.change_log_position_seq;

CREATE FUNCTION {{schema}}.next_position() RETURNS bigint
LANGUAGE sql VOLATILE AS $fn$
	SELECT CASE WHEN pg_current_xact_id() IS NOT NULL
	            THEN nextval('{{schema_lit}}.change_log_position_seq') END
$fn$;

CREATE TABLE {{schema}}.change_log (
	position     bigint      NOT NULL DEFAULT {{schema}}.next_position() PRIMARY KEY,
	xid          xid8        NOT NULL DEFAULT pg_current_xact_id(),
	id           uuid        NOT NULL DEFAULT gen_random_uuid(),
	op           text        NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'CUSTOM')),
	entity_type  text        NOT NULL,
	entity_id    text        NOT NULL DEFAULT '',
	source_table text,
	after_image  jsonb,
	before_image jsonb,
	changes      jsonb,
	user_id      text,
	tenant_id    text,
	created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
	source       text,
	seq          bigint,
	metadata     jsonb
);

ALTER SEQUENCE {{schema}}.change_log_position_seq OWNED BY {{schema}}.change_log.position;

-- Publishing an event id twice stores it once.
CREATE UNIQUE INDEX change_log_id_key ON {{schema}}.change_log (id);

CREATE TABLE {{schema}}.checkpoints (
	source         text        NOT NULL,
	consumer_group text        NOT NULL,
	position       bigint      NOT NULL,
	updated_at     timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (source, consumer_group)
);

-- Row-level AFTER trigger: TG_ARGV[0] is the entity type, the other
-- arguments the primary-key columns, found by watch.
CREATE FUNCTION {{schema}}.capture() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
	after_img  jsonb;
	before_img jsonb;
	img        jsonb;
	eid        text;
	i          int;
BEGIN
	IF TG_OP <> 'DELETE' THEN
		after_img := to_jsonb(NEW);
	END IF;
	IF TG_OP <> 'INSERT' THEN
		before_img := to_jsonb(OLD);
	END IF;
	img := coalesce(after_img, before_img);
	FOR i IN 1 .. TG_NARGS - 1 LOOP
		eid := concat_ws(':', eid, img ->> TG_ARGV[i]);
	END LOOP;
	INSERT INTO {{schema}}.change_log
		(op, entity_type, entity_id, source_table, after_image, before_image, user_id, tenant_id)
	VALUES
		(TG_OP, TG_ARGV[0], coalesce(eid, ''), TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, after_img, before_img,
		 nullif(current_setting('millrace.user_id', true), ''),
		 nullif(current_setting('millrace.tenant_id', true), ''));
	RETURN NULL;
END
$fn$;

-- Statement-level wake-up trigger. It does nothing until SetNotify turns
-- notifications on: a transaction that notifies takes a global lock at
-- commit.
CREATE FUNCTION {{schema}}.notify() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
	RETURN NULL;
END
$fn$;
