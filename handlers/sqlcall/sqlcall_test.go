package sqlcall_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/sqlcall"
	"github.com/millrace/millrace/internal/testenv"
)

const path = "observers.o.actions[0]"

func registry(t *testing.T) *handlers.Registry {
	t.Helper()
	reg := handlers.NewRegistry()
	if err := sqlcall.Register(reg); err != nil {
		t.Fatal(err)
	}
	return reg
}

// build builds a sql action on the named database "main", served by pool.
func build(t *testing.T, pool *pgxpool.Pool, raw config.Action) handlers.Action {
	t.Helper()
	reg := registry(t)
	raw["type"] = "sql"
	spec, err := reg.Decode(path, raw)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	cfg := config.Default()
	cfg.Databases = map[string]config.Database{"main": {URL: "postgres://unused"}}
	a, err := reg.Build(context.Background(), spec, handlers.Deps{
		Config: cfg,
		Database: func(name string) (*pgxpool.Pool, error) {
			if name != "main" {
				return nil, fmt.Errorf("databases.%s is not configured", name)
			}
			return pool, nil
		},
	})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return a
}

func exec(t *testing.T, pool *pgxpool.Pool, sql string) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func order(id string) *event.Event {
	return &event.Event{
		ID: id, Type: event.Update, Entity: "Order", EntityID: "1001",
		Data:      map[string]any{"status": "shipped", "total": 99.5, "note": "it's \"quoted\""},
		Changes:   map[string]event.Change{"status": {Old: "new", New: "shipped"}},
		Timestamp: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC),
	}
}

const evID = "0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01"

func TestCallsFunctionWithEvent(t *testing.T) {
	t.Parallel()
	pool, schema := testenv.Postgres(t)
	exec(t, pool, `CREATE TABLE received (payload jsonb NOT NULL)`)
	exec(t, pool, fmt.Sprintf(`CREATE FUNCTION %s.record_event(ev jsonb) RETURNS void LANGUAGE sql
		AS $$ INSERT INTO %s.received VALUES (ev) $$`, schema, schema))

	a := build(t, pool, config.Action{"database": "main", "function": schema + ".record_event"})
	if err := a.Execute(context.Background(), order(evID)); err != nil {
		t.Fatalf("Execute: %v", err)
	}

	var raw []byte
	if err := pool.QueryRow(context.Background(), `SELECT payload FROM received`).Scan(&raw); err != nil {
		t.Fatalf("read the row back: %v", err)
	}
	got, err := event.Decode(raw)
	if err != nil {
		t.Fatalf("the function received %s, which is not an event: %v", raw, err)
	}
	want := order(evID)
	if got.ID != want.ID || got.Type != want.Type || got.Entity != want.Entity || got.EntityID != want.EntityID ||
		got.Data["status"] != "shipped" || got.Data["total"] != 99.5 || got.Data["note"] != want.Data["note"] ||
		got.Changes["status"].Old != "new" || !got.Timestamp.Equal(want.Timestamp) {
		t.Errorf("the function received %s, want the event %+v", raw, want)
	}
}

func TestParams(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Postgres(t)
	exec(t, pool, `CREATE TABLE received (payload jsonb NOT NULL)`)
	// Unqualified: the pool's search_path is the test schema.
	exec(t, pool, `CREATE FUNCTION record_event(ev jsonb) RETURNS int LANGUAGE plpgsql
		AS $$ BEGIN INSERT INTO received VALUES (ev); RETURN 1; END $$`)

	a := build(t, pool, config.Action{
		"database": "main", "function": "record_event",
		"params": map[string]any{"channel": "orders", "priority": int64(2)},
	})
	if err := a.Execute(context.Background(), order(evID)); err != nil {
		t.Fatalf("Execute: %v", err)
	}
	var id, status, channel string
	var priority int
	err := pool.QueryRow(context.Background(), `SELECT payload->'event'->>'id', payload->'event'->'data'->>'status',
		payload->'params'->>'channel', (payload->'params'->>'priority')::int FROM received`).Scan(&id, &status, &channel, &priority)
	if err != nil {
		t.Fatal(err)
	}
	if id != evID || status != "shipped" || channel != "orders" || priority != 2 {
		t.Errorf("the function received event id %q, status %q, params channel %q priority %d; want %s, shipped, orders, 2",
			id, status, channel, priority, evID)
	}
}

func TestErrorClassification(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Postgres(t)
	// Raises the SQLSTATE the event asks for.
	exec(t, pool, `CREATE FUNCTION fail_with(ev jsonb) RETURNS void LANGUAGE plpgsql
		AS $$ BEGIN RAISE EXCEPTION 'order % refused', ev->>'entity_id' USING ERRCODE = ev->'data'->>'code'; END $$`)
	exec(t, pool, `CREATE FUNCTION refuse(ev jsonb) RETURNS void LANGUAGE plpgsql
		AS $$ BEGIN RAISE EXCEPTION 'order % refused', ev->>'entity_id'; END $$`)

	t.Run("raise exception is permanent", func(t *testing.T) {
		a := build(t, pool, config.Action{"database": "main", "function": "refuse"})
		err := a.Execute(context.Background(), order(evID))
		if err == nil || !handlers.IsPermanent(err) || !strings.Contains(err.Error(), "order 1001 refused") {
			t.Errorf("Execute = %v, want a permanent error with the function's message", err)
		}
	})
	t.Run("unknown function is permanent", func(t *testing.T) {
		a := build(t, pool, config.Action{"database": "main", "function": "no_such_function"})
		err := a.Execute(context.Background(), order(evID))
		if err == nil || !handlers.IsPermanent(err) || !strings.Contains(err.Error(), "42883") {
			t.Errorf("Execute = %v, want a permanent error with SQLSTATE 42883", err)
		}
	})

	a := build(t, pool, config.Action{"database": "main", "function": "fail_with"})
	for _, c := range []struct {
		code      string
		permanent bool
	}{
		{"22P02", true},  // invalid text representation
		{"23505", true},  // unique violation
		{"42501", true},  // insufficient privilege
		{"P0001", true},  // raise exception
		{"40001", false}, // serialization failure
		{"40P01", false}, // deadlock
		{"53300", false}, // too many connections
		{"57014", false}, // query canceled
		{"08006", false}, // connection failure
	} {
		t.Run(c.code, func(t *testing.T) {
			ev := order(evID)
			ev.Data["code"] = c.code
			err := a.Execute(context.Background(), ev)
			if err == nil {
				t.Fatal("Execute succeeded, want an error")
			}
			if !strings.Contains(err.Error(), c.code) {
				t.Errorf("Execute = %v, want SQLSTATE %s", err, c.code)
			}
			if handlers.IsPermanent(err) != c.permanent {
				t.Errorf("IsPermanent(%v) = %v, want %v", err, handlers.IsPermanent(err), c.permanent)
			}
		})
	}

	t.Run("unreachable server is transient", func(t *testing.T) {
		down, err := pgxpool.New(context.Background(), fmt.Sprintf("postgres://root@127.0.0.1:%d/test?sslmode=disable&connect_timeout=5", testenv.FreePort(t)))
		if err != nil {
			t.Fatal(err)
		}
		defer down.Close()
		a := build(t, down, config.Action{"database": "main", "function": "fail_with"})
		err = a.Execute(context.Background(), order(evID))
		if err == nil || handlers.IsPermanent(err) {
			t.Errorf("Execute = %v, want a transient error", err)
		}
	})
}

func TestBuildNeedsDatabaseSection(t *testing.T) {
	t.Parallel()
	reg := registry(t)
	spec, err := reg.Decode(path, config.Action{"type": "sql", "database": "orders", "function": "f"})
	if err != nil {
		t.Fatal(err)
	}
	called := false
	_, err = reg.Build(context.Background(), spec, handlers.Deps{
		Config:   config.Default(),
		Database: func(string) (*pgxpool.Pool, error) { called = true; return nil, nil },
	})
	if err == nil || !strings.Contains(err.Error(), "databases.orders") || !strings.Contains(err.Error(), path) {
		t.Errorf("Build = %v, want an error naming databases.orders and %s", err, path)
	}
	if called {
		t.Error("Build asked for a pool of a database that is not configured")
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	reg := registry(t)
	valid := func() config.Action {
		return config.Action{"type": "sql", "database": "main", "function": "app.on_order"}
	}
	if _, err := reg.Decode(path, valid()); err != nil {
		t.Fatalf("a valid section: %v", err)
	}
	const p = path + "."
	cases := []struct {
		name   string
		change func(config.Action)
		want   string
	}{
		{"database missing", func(a config.Action) { delete(a, "database") }, p + "database: is required"},
		{"function missing", func(a config.Action) { delete(a, "function") }, p + "function: is required"},
		{"function injection", func(a config.Action) { a["function"] = "f($1); DROP TABLE orders; --" }, p + "function:"},
		{"function with three parts", func(a config.Action) { a["function"] = "db.app.f" }, p + "function:"},
		{"function quoted", func(a config.Action) { a["function"] = `"App".f` }, p + "function:"},
		{"function starts with a digit", func(a config.Action) { a["function"] = "1f" }, p + "function:"},
		{"params not a table", func(a config.Action) { a["params"] = "x" }, p + "params: must be a table"},
		{"unknown key", func(a config.Action) { a["query"] = "SELECT 1" }, p + "query: unknown key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := valid()
			c.change(a)
			_, err := reg.Decode(path, a)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Decode = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// The payload must stay valid JSON whatever the event holds.
func TestPayloadIsJSON(t *testing.T) {
	t.Parallel()
	pool, _ := testenv.Postgres(t)
	exec(t, pool, `CREATE TABLE received (payload jsonb NOT NULL)`)
	exec(t, pool, `CREATE FUNCTION record_event(ev jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO received VALUES (ev) $$`)
	a := build(t, pool, config.Action{"database": "main", "function": "record_event"})
	ev := order(evID)
	ev.Data = map[string]any{"text": "'); DROP TABLE received; --\n\"", "nested": map[string]any{"list": []any{int64(1), "two"}}}
	if err := a.Execute(context.Background(), ev); err != nil {
		t.Fatalf("Execute: %v", err)
	}
	var raw []byte
	if err := pool.QueryRow(context.Background(), `SELECT payload->'data' FROM received`).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	var data map[string]any
	if err := json.Unmarshal(raw, &data); err != nil {
		t.Fatal(err)
	}
	if data["text"] != ev.Data["text"] {
		t.Errorf("data.text = %q, want %q", data["text"], ev.Data["text"])
	}
}
