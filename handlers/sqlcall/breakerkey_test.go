package sqlcall_test

import (
	"strconv"
	"testing"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/middleware"
)

// The breaker key is the database the pool connects to: host, port and
// database name, no user or password.
func TestBreakerKeyIsTheDatabase(t *testing.T) {
	t.Parallel()
	pool, schema := testenv.Postgres(t)
	a := build(t, pool, config.Action{"database": "main", "function": schema + ".f"})
	k, ok := a.(middleware.BreakerKeyer)
	if !ok {
		t.Fatalf("%T does not implement middleware.BreakerKeyer", a)
	}
	c := pool.Config().ConnConfig
	want := "postgres://" + c.Host + ":" + strconv.Itoa(int(c.Port)) + "/" + c.Database
	if got := k.BreakerKey(); got != want {
		t.Errorf("BreakerKey() = %q; want %q", got, want)
	}
}
