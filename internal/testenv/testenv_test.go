package testenv_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/internal/testenv"
)

func TestURLs(t *testing.T) {
	t.Setenv(testenv.PostgresURLEnv, "")
	t.Setenv(testenv.RedisURLEnv, "")
	t.Setenv(testenv.NATSURLEnv, "")
	if got := testenv.PostgresURL(); got != "postgres://root@127.0.0.1:5432/test?sslmode=disable" {
		t.Errorf("PostgresURL() = %q", got)
	}
	if got := testenv.RedisURL(); got != "redis://127.0.0.1:6379/0" {
		t.Errorf("RedisURL() = %q", got)
	}
	if got := testenv.NATSURL(); got != "nats://127.0.0.1:4222" {
		t.Errorf("NATSURL() = %q", got)
	}

	t.Setenv(testenv.PostgresURLEnv, "postgres://u@db:5433/x")
	t.Setenv(testenv.RedisURLEnv, "redis://cache:6380/2")
	t.Setenv(testenv.NATSURLEnv, "nats://bus:4223")
	if got := testenv.PostgresURL(); got != "postgres://u@db:5433/x" {
		t.Errorf("PostgresURL() with override = %q", got)
	}
	if got := testenv.RedisURL(); got != "redis://cache:6380/2" {
		t.Errorf("RedisURL() with override = %q", got)
	}
	if got := testenv.NATSURL(); got != "nats://bus:4223" {
		t.Errorf("NATSURL() with override = %q", got)
	}
}

// namedTB reports a chosen test name.
type namedTB struct {
	testing.TB
	name string
}

func (n namedTB) Name() string { return n.name }

var validName = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

func TestName(t *testing.T) {
	a, b := testenv.Name(t), testenv.Name(t)
	if a == b {
		t.Errorf("two calls returned the same name %q", a)
	}
	if !strings.HasPrefix(a, "testname_") {
		t.Errorf("Name() = %q, want it to start with the test name", a)
	}
	for _, name := range []string{
		"TestName",
		"TestOrders/retry after crash #2",
		"123/Ünïcode---and  spaces__",
		"///",
		"",
		strings.Repeat("VeryLongTestName", 10),
	} {
		got := testenv.Name(namedTB{t, name})
		if !validName.MatchString(got) || len(got) > 43 || strings.Contains(got, "__") {
			t.Errorf("Name(%q) = %q: want [a-z][a-z0-9_]*, at most 43 bytes, no double underscore", name, got)
		}
	}
	if got := testenv.Name(namedTB{t, "TestOrders/retry after crash #2"}); !strings.HasPrefix(got, "testorders_retry_after_crash_2_") {
		t.Errorf("Name() = %q, want prefix testorders_retry_after_crash_2_", got)
	}
}

func TestFreePort(t *testing.T) {
	port := testenv.FreePort(t)
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("FreePort() = %d, which cannot be bound: %v", port, err)
	}
	_ = l.Close()
}

// schemaExists looks the schema up over a connection of its own.
func schemaExists(t *testing.T, schema string) bool {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testenv.PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	return exists
}

func TestPostgres(t *testing.T) {
	t.Parallel()
	var schema string
	t.Run("uses a fresh schema", func(t *testing.T) {
		p, s := testenv.Postgres(t)
		schema = s
		ctx := context.Background()
		if !validName.MatchString(s) {
			t.Errorf("schema %q is not a plain identifier", s)
		}
		var current string
		if err := p.QueryRow(ctx, "SELECT current_schema()").Scan(&current); err != nil {
			t.Fatal(err)
		}
		if current != s {
			t.Errorf("current_schema() = %q, want %q", current, s)
		}
		if _, err := p.Exec(ctx, "CREATE TABLE items (id int PRIMARY KEY, name text)"); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Exec(ctx, "INSERT INTO items VALUES (1, 'one')"); err != nil {
			t.Fatal(err)
		}
		var tableSchema string
		if err := p.QueryRow(ctx, "SELECT table_schema FROM information_schema.tables WHERE table_name = 'items' AND table_schema = $1", s).Scan(&tableSchema); err != nil {
			t.Fatalf("table items not found in schema %s: %v", s, err)
		}
		// Every connection of the pool has the search_path, not only the first.
		conns := make([]*pgxpool.Conn, 0, 3)
		for range 3 {
			c, err := p.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			var n int
			if err := c.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil || n != 1 {
				t.Errorf("count(*) on a pooled connection = %d, %v; want 1", n, err)
			}
		}
		for _, c := range conns {
			c.Release()
		}
		if !schemaExists(t, s) {
			t.Errorf("schema %s does not exist during the test", s)
		}
	})
	if schema == "" {
		t.Fatal("the subtest did not run")
	}
	if schemaExists(t, schema) {
		t.Errorf("schema %s still exists after the test", schema)
	}

	t.Run("drops the schema when the test closed the pool", func(t *testing.T) {
		p, s := testenv.Postgres(t)
		schema = s
		if _, err := p.Exec(context.Background(), "CREATE TABLE t (x int)"); err != nil {
			t.Fatal(err)
		}
		p.Close()
	})
	if schemaExists(t, schema) {
		t.Errorf("schema %s still exists after the test", schema)
	}
}

func TestPostgresSchemaURL(t *testing.T) {
	_, schema := testenv.Postgres(t)
	ctx := context.Background()
	check := func(t *testing.T) {
		u := testenv.PostgresSchemaURL(t, schema)
		conn, err := pgx.Connect(ctx, u)
		if err != nil {
			t.Fatalf("connect %s: %v", u, err)
		}
		defer func() { _ = conn.Close(ctx) }()
		var current string
		if err := conn.QueryRow(ctx, "SELECT current_schema()").Scan(&current); err != nil {
			t.Fatal(err)
		}
		if current != schema {
			t.Errorf("current_schema() through %s = %q, want %q", u, current, schema)
		}
	}
	t.Run("url", check)
	t.Run("keyword/value", func(t *testing.T) {
		t.Setenv(testenv.PostgresURLEnv, "host=127.0.0.1 port=5432 user=root dbname=test sslmode=disable")
		check(t)
	})
}

func TestRedis(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	outside, _ := testenv.Redis(t)
	other := testenv.Name(t) + ":not-in-the-prefix"
	if err := outside.Set(ctx, other, "kept", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}

	var prefix string
	t.Run("keys are deleted", func(t *testing.T) {
		client, p := testenv.Redis(t)
		prefix = p
		if !strings.HasSuffix(p, ":") || !validName.MatchString(strings.TrimSuffix(p, ":")) {
			t.Errorf("prefix %q: want Name(t)+\":\"", p)
		}
		// More keys than one SCAN/UNLINK batch.
		pipe := client.Pipeline()
		for i := range 1234 {
			pipe.Set(ctx, p+"k"+strconv.Itoa(i), i, 0)
		}
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: p + "stream", Values: map[string]any{"a": 1}})
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		if n, err := client.Exists(ctx, p+"k0", p+"k1233", p+"stream").Result(); err != nil || n != 3 {
			t.Fatalf("Exists = %d, %v; want 3", n, err)
		}
	})
	keys, err := outside.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Errorf("%d keys with prefix %s left after the test, e.g. %s", len(keys), prefix, keys[0])
	}
	if v, err := outside.Get(ctx, other).Result(); err != nil || v != "kept" {
		t.Errorf("key outside the prefix: %q, %v; want it kept", v, err)
	}
	outside.Del(ctx, other)

	t.Run("keys are deleted when the test closed the client", func(t *testing.T) {
		client, p := testenv.Redis(t)
		prefix = p
		if err := client.Set(ctx, p+"x", 1, 0).Err(); err != nil {
			t.Fatal(err)
		}
		_ = client.Close()
	})
	if n, err := outside.Exists(ctx, prefix+"x").Result(); err != nil || n != 0 {
		t.Errorf("Exists(%sx) after the test = %d, %v; want 0", prefix, n, err)
	}
}

func TestNATS(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, outside, _ := testenv.NATS(t)

	// A stream another test owns, whose name does not start with the prefix.
	kept := "KEEP_" + strings.ToUpper(testenv.Name(t))
	if _, err := outside.CreateStream(ctx, jetstream.StreamConfig{Name: kept, Subjects: []string{strings.ToLower(kept) + ".>"}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = outside.DeleteStream(context.Background(), kept) })

	var streams, buckets, objects []string
	t.Run("streams and buckets are deleted", func(t *testing.T) {
		nc, js, prefix := testenv.NATS(t)
		if !nc.IsConnected() {
			t.Fatal("not connected")
		}
		if !validName.MatchString(prefix) {
			t.Errorf("prefix %q is not a valid name", prefix)
		}
		streams = []string{strings.ToUpper(prefix) + "_EVENTS", prefix + "_lower"}
		for _, name := range streams {
			subject := strings.ToLower(name) + ".>"
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subject}}); err != nil {
				t.Fatalf("create stream %s: %v", name, err)
			}
			if _, err := js.Publish(ctx, strings.ToLower(name)+".x", []byte("hello")); err != nil {
				t.Fatalf("publish to %s: %v", name, err)
			}
			if _, err := js.CreateOrUpdateConsumer(ctx, name, jetstream.ConsumerConfig{Durable: "c"}); err != nil {
				t.Fatalf("create consumer on %s: %v", name, err)
			}
		}
		buckets = []string{prefix + "_kv", strings.ToUpper(prefix) + "_KV"}
		for _, b := range buckets {
			kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b})
			if err != nil {
				t.Fatalf("create bucket %s: %v", b, err)
			}
			if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
				t.Fatal(err)
			}
		}
		objects = []string{prefix + "_obj"}
		for _, b := range objects {
			obj, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: b})
			if err != nil {
				t.Fatalf("create object store %s: %v", b, err)
			}
			if _, err := obj.PutBytes(ctx, "o", []byte("data")); err != nil {
				t.Fatal(err)
			}
		}
		nc.Close() // cleanup must work on a connection of its own
	})
	if len(streams) == 0 {
		t.Fatal("the subtest did not run")
	}
	for _, name := range streams {
		if _, err := outside.Stream(ctx, name); !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Errorf("stream %s after the test: %v, want ErrStreamNotFound", name, err)
		}
	}
	for _, b := range buckets {
		if _, err := outside.KeyValue(ctx, b); !errors.Is(err, jetstream.ErrBucketNotFound) {
			t.Errorf("bucket %s after the test: %v, want ErrBucketNotFound", b, err)
		}
	}
	for _, b := range objects {
		if _, err := outside.ObjectStore(ctx, b); !errors.Is(err, jetstream.ErrBucketNotFound) {
			t.Errorf("object store %s after the test: %v, want ErrBucketNotFound", b, err)
		}
	}
	if _, err := outside.Stream(ctx, kept); err != nil {
		t.Errorf("stream %s, which does not start with the prefix, was deleted: %v", kept, err)
	}
}

func TestStartRedis(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var addr string
	t.Run("stop and start", func(t *testing.T) {
		srv := testenv.StartRedis(t)
		addr = srv.Addr()
		url := srv.URL()
		if url != "redis://"+addr+"/0" {
			t.Errorf("URL() = %q, Addr() = %q", url, addr)
		}
		opts, err := redis.ParseURL(url)
		if err != nil {
			t.Fatal(err)
		}
		opts.MaxRetries = -1
		client := redis.NewClient(opts)
		defer func() { _ = client.Close() }()
		if err := client.Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Fatalf("set on a started server: %v", err)
		}

		srv.Stop()
		srv.Stop() // stopping twice is harmless
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.Close()
			t.Fatal("the server still accepts connections after Stop")
		}

		srv.Start()
		srv.Start() // starting twice is harmless
		if srv.URL() != url {
			t.Errorf("URL changed across a restart: %q, then %q", url, srv.URL())
		}
		if err := client.Ping(ctx).Err(); err != nil {
			t.Fatalf("ping after Start: %v", err)
		}
		if err := client.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
			t.Errorf("Get after a restart: %v, want redis.Nil (no persistence)", err)
		}
	})
	if addr == "" {
		t.Fatal("the subtest did not run")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		_ = c.Close()
		t.Errorf("redis-server on %s still answers after the test", addr)
	}
}

// fatalTB records the message of Fatalf and ends the goroutine, as
// testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// fatalMessage runs fn with a fatalTB and returns what it failed with.
func fatalMessage(t *testing.T, fn func(testing.TB)) string {
	t.Helper()
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	if f.msg == "" {
		t.Fatal("the call did not fail the test")
	}
	return f.msg
}

func TestUnreachableServiceFailsTheTest(t *testing.T) {
	closed := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	cases := []struct {
		service, env, url, shown string
		call                     func(testing.TB)
	}{
		{"PostgreSQL", testenv.PostgresURLEnv,
			"postgres://root:secret@" + closed + "/test?sslmode=disable",
			"postgres://root:xxxxx@" + closed + "/test?sslmode=disable",
			func(tb testing.TB) { testenv.Postgres(tb) }},
		{"Redis", testenv.RedisURLEnv, "redis://" + closed + "/0", "redis://" + closed + "/0",
			func(tb testing.TB) { testenv.Redis(tb) }},
		{"NATS", testenv.NATSURLEnv, "nats://" + closed, "nats://" + closed,
			func(tb testing.TB) { testenv.NATS(tb) }},
	}
	for _, c := range cases {
		t.Run(c.service, func(t *testing.T) {
			t.Setenv(c.env, c.url)
			msg := fatalMessage(t, c.call)
			for _, want := range []string{"cannot reach " + c.service, c.shown, "make test", "test/services.sh", c.env} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q does not contain %q", msg, want)
				}
			}
			if strings.Contains(msg, "secret") {
				t.Errorf("message %q shows the password", msg)
			}
		})
	}
}

func TestStartRedisWithoutRedisServer(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	msg := fatalMessage(t, func(tb testing.TB) { testenv.StartRedis(tb) })
	if !strings.Contains(msg, "redis-server is not installed") || !strings.Contains(msg, "test/services.sh") {
		t.Errorf("message %q: want it to say redis-server is missing and how to install it", msg)
	}
}
