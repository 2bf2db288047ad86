package capture_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/millrace/millrace/bus/capture"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/internal/testenv"
)

// fraiseqlDDL is the part of FraiseQL's core.tb_entity_change_log that
// millrace reads, created in the test's schema.
const fraiseqlDDL = `
CREATE SEQUENCE seq_entity_change_log;
CREATE TABLE tb_entity_change_log (
	pk_entity_change_log BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	object_type          TEXT NOT NULL,
	modification_type    TEXT NOT NULL,
	id                   UUID DEFAULT gen_random_uuid(),
	created_at           TIMESTAMPTZ DEFAULT now(),
	tenant_id            UUID,
	fk_customer_org      BIGINT,
	fk_contact           BIGINT,
	object_id            UUID,
	object_data          JSONB,
	object_data_before   JSONB,
	updated_fields       TEXT[],
	seq                  BIGINT DEFAULT nextval('seq_entity_change_log')
)`

const fraiseqlInsert = `INSERT INTO tb_entity_change_log
	(object_type, modification_type, tenant_id, fk_contact, object_id, object_data, object_data_before)
	VALUES ('Order', $1, '11111111-2222-3333-4444-555555555555', 42, '99999999-8888-7777-6666-555555555555', $2, $3)`

func TestFraiseQLMode(t *testing.T) {
	t.Parallel()
	pool, schema := testenv.Postgres(t)
	ctx := context.Background()
	run(t, pool, fraiseqlDDL)
	if err := capture.Migrate(ctx, pool, schema); err != nil { // checkpoints
		t.Fatal(err)
	}
	run(t, pool, fraiseqlInsert, "INSERT", `{"status": "new", "total": 10}`, nil)
	run(t, pool, fraiseqlInsert, "UPDATE", `{"status": "paid", "total": 10}`, `{"status": "new", "total": 10}`)

	cfg := config(schema)
	cfg.Mode = capture.ModeFraiseQL
	cfg.Tables = []string{schema + ".tb_entity_change_log"}
	ch, _, _ := subscribe(t, pool, cfg, "g")
	evs := ackAll(t, ch, 2) // one entity: in order
	if evs[0].Type != event.Insert || evs[1].Type != event.Update {
		t.Fatalf("events %s, %s; want INSERT, UPDATE", evs[0].Type, evs[1].Type)
	}
	ins, upd := evs[0], evs[1]
	if ins.Entity != "Order" || ins.EntityID != "99999999-8888-7777-6666-555555555555" || ins.UserID != "42" ||
		ins.TenantID != "11111111-2222-3333-4444-555555555555" || ins.Data["status"] != "new" || ins.Seq != 1 || ins.Source != "orders_db" {
		t.Errorf("insert = %+v", ins)
	}
	if fmt.Sprint(upd.Changes) != fmt.Sprint(map[string]event.Change{"status": {Old: "new", New: "paid"}}) {
		t.Errorf("update changes = %v", upd.Changes)
	}
	var id string
	if err := pool.QueryRow(ctx, "SELECT id::text FROM tb_entity_change_log WHERE pk_entity_change_log = 1").Scan(&id); err != nil || ins.ID != id {
		t.Errorf("event id %s, row id %s (%v)", ins.ID, id, err)
	}

	// A late commit and a rolled-back row.
	t1, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = t1.Rollback(ctx) }()
	if _, err := t1.Exec(ctx, fraiseqlInsert, "DELETE", nil, `{"status": "paid", "total": 10}`); err != nil {
		t.Fatal(err)
	}
	rb, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rb.Exec(ctx, fraiseqlInsert, "UPDATE", `{}`, `{}`); err != nil {
		t.Fatal(err)
	}
	_ = rb.Rollback(ctx)
	run(t, pool, fraiseqlInsert, "NOOP", `{"n": 1}`, nil)
	none(t, ch, 40*cfg.PollInterval)
	if err := t1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	evs = ackAll(t, ch, 2)
	if evs[0].Type != event.Delete || evs[0].Data["status"] != "paid" || evs[1].Type != event.Custom {
		t.Errorf("after the late commit: %s %v, %s; want DELETE with the before-image, then CUSTOM", evs[0].Type, evs[0].Data, evs[1].Type)
	}
	none(t, ch, 10*cfg.PollInterval)
}
