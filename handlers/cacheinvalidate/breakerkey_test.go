package cacheinvalidate_test

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/middleware"
)

// The breaker key is the Redis server and database, without a password.
func TestBreakerKeyIsTheServer(t *testing.T) {
	t.Parallel()
	client := redis.NewClient(&redis.Options{Addr: "10.0.0.5:6380", DB: 3, Password: "s3cret"})
	t.Cleanup(func() { _ = client.Close() })
	a := build(t, client, config.Action{"keys": []any{"order:{{.entity_id}}"}})
	k, ok := a.(middleware.BreakerKeyer)
	if !ok {
		t.Fatalf("%T does not implement middleware.BreakerKeyer", a)
	}
	if got, want := k.BreakerKey(), "redis://10.0.0.5:6380/3"; got != want {
		t.Errorf("BreakerKey() = %q; want %q", got, want)
	}
}
