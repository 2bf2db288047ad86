package testenv

import (
	"context"
	"net"
	"testing"

	"github.com/redis/go-redis/v9"
)

// Redis connects to [RedisURL] and returns a client and a key prefix,
// Name(t)+":". When the test ends every key starting with the prefix is
// deleted and the client is closed, so the test must put the prefix in
// front of every key (and stream) it writes.
//
// The test fails at once when Redis cannot be reached.
func Redis(t testing.TB) (client *redis.Client, prefix string) {
	t.Helper()
	rawURL := RedisURL()
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		t.Fatalf("testenv: invalid Redis URL %s (%s): %v", redact(rawURL), RedisURLEnv, err)
	}
	// A plain dial first: when nothing listens, go-redis would retry with
	// backoff and log every attempt before giving up.
	conn, err := net.DialTimeout(opts.Network, opts.Addr, connectTimeout)
	if err != nil {
		unreachable(t, "Redis", rawURL, RedisURLEnv, err)
	}
	_ = conn.Close()
	client = redis.NewClient(opts)
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		unreachable(t, "Redis", rawURL, RedisURLEnv, err)
	}
	prefix = Name(t) + ":"
	t.Cleanup(func() {
		_ = client.Close() // the test may have closed it already
		deleteKeys(t, opts, prefix)
	})
	return client, prefix
}

// deleteKeys removes every key starting with prefix, over a client of its
// own. The prefix comes from [Name] and holds no glob characters.
func deleteKeys(t testing.TB, opts *redis.Options, prefix string) {
	t.Helper()
	client := redis.NewClient(opts)
	defer func() { _ = client.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 3*connectTimeout)
	defer cancel()

	const batch = 500
	keys := make([]string, 0, batch)
	flush := func() bool {
		if len(keys) == 0 {
			return true
		}
		if err := client.Unlink(ctx, keys...).Err(); err != nil {
			t.Errorf("testenv: cannot delete Redis keys %s*: %v", prefix, err)
			return false
		}
		keys = keys[:0]
		return true
	}
	iter := client.Scan(ctx, 0, prefix+"*", batch).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
		if len(keys) == batch && !flush() {
			return
		}
	}
	if err := iter.Err(); err != nil {
		t.Errorf("testenv: cannot scan Redis keys %s*: %v", prefix, err)
		return
	}
	flush()
}
