package try_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/cacheinvalidate"
	"github.com/millrace/millrace/handlers/publish"
	"github.com/millrace/millrace/handlers/sqlcall"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/try"
)

// The actions of a dry run cannot reach their services even when they
// are executed, not rendered: the Redis client and the database pool
// refuse to connect and publishing fails. Their effects still name the
// servers of the config.
func TestDependenciesReachNothing(t *testing.T) {
	t.Parallel()
	rc, prefix := testenv.Redis(t)
	pool, schema := testenv.Postgres(t)
	ctx := context.Background()
	if err := rc.Set(ctx, prefix+"order:1", "cached", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE calls (ev jsonb);
		CREATE FUNCTION on_order(ev jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO calls VALUES (ev) $$`); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(fmt.Appendf(nil, `
[redis]
url = %q
[databases.main]
url = %q
[observers.o]
[[observers.o.actions]]
type = "cache_invalidate"
keys = ["%sorder:{{ .entity_id }}"]
[[observers.o.actions]]
type = "sql"
database = "main"
function = "on_order"
[[observers.o.actions]]
type = "publish"
topic = "out"
`, testenv.RedisURL(), testenv.PostgresSchemaURL(t, schema), prefix), nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := handlers.NewRegistry()
	for _, r := range []func(*handlers.Registry) error{cacheinvalidate.Register, sqlcall.Register, publish.Register} {
		if err := r(reg); err != nil {
			t.Fatal(err)
		}
	}
	set, err := try.Build(ctx, cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	ev := &event.Event{ID: "00000000-0000-4000-8000-000000000001", Type: event.Update, Entity: "Order", EntityID: "1"}

	outs := set.Run(ctx, ev)
	if len(outs) != 1 || len(outs[0].Effects) != 3 || len(outs[0].Errors) != 0 {
		t.Fatalf("outcomes %+v", outs)
	}
	redisAddr := strings.Split(testenv.RedisURL(), "/")[2]
	if e := outs[0].Effects[0].Effect; !strings.Contains(e.Target, redisAddr) || e.Body != "UNLINK "+prefix+"order:1\n" {
		t.Errorf("cache_invalidate effect %+v, want the config's server %s", e, redisAddr)
	}

	// Executing them anyway fails without reaching anything.
	for _, b := range try.Compiled(set)[0].Actions {
		err := handlers.Execute(ctx, b.Action, ev)
		if err == nil || !strings.Contains(err.Error(), "sending is disabled in a dry run") {
			t.Errorf("%s: Execute returned %v, want the dry run's refusal", b.Spec.Type, err)
		}
	}
	if n, err := rc.Exists(ctx, prefix+"order:1").Result(); err != nil || n != 1 {
		t.Errorf("the cache key is gone (%d, %v)", n, err)
	}
	var calls int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM calls").Scan(&calls); err != nil || calls != 0 {
		t.Errorf("the SQL function ran %d time(s) (%v)", calls, err)
	}
}
