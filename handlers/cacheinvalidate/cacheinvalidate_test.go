package cacheinvalidate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/cacheinvalidate"
	"github.com/millrace/millrace/internal/testenv"
)

const path = "observers.o.actions[0]"

func registry(t *testing.T) *handlers.Registry {
	t.Helper()
	reg := handlers.NewRegistry()
	if err := cacheinvalidate.Register(reg); err != nil {
		t.Fatal(err)
	}
	return reg
}

func build(t *testing.T, client redis.UniversalClient, raw config.Action) handlers.Action {
	t.Helper()
	reg := registry(t)
	raw["type"] = "cache_invalidate"
	spec, err := reg.Decode(path, raw)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	cfg := config.Default()
	cfg.Redis.URL = testenv.RedisURL()
	a, err := reg.Build(context.Background(), spec, handlers.Deps{
		Config: cfg,
		Redis:  func() (redis.UniversalClient, error) { return client, nil },
	})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return a
}

func set(t *testing.T, client *redis.Client, keys ...string) {
	t.Helper()
	pipe := client.Pipeline()
	for _, k := range keys {
		pipe.Set(context.Background(), k, "v", 0)
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// exists returns which of keys exist.
func exists(t *testing.T, client *redis.Client, keys ...string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, k := range keys {
		n, err := client.Exists(context.Background(), k).Result()
		if err != nil {
			t.Fatal(err)
		}
		out[k] = n == 1
	}
	return out
}

func order(entityID string) *event.Event {
	return &event.Event{
		ID: "0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01", Type: event.Update, Entity: "Order", EntityID: entityID,
		Data: map[string]any{"customer_id": int64(42), "name": "x"},
	}
}

func TestLiteralKeys(t *testing.T) {
	t.Parallel()
	client, prefix := testenv.Redis(t)
	set(t, client, prefix+"order:1001", prefix+"order:1002", prefix+"customer:42:orders", prefix+"customer:43:orders")
	a := build(t, client, config.Action{
		"prefix": prefix,
		"keys":   []any{"order:{{.entity_id}}", "customer:{{.data.customer_id}}:orders", "missing:{{.entity_id}}"},
	})
	if err := a.Execute(context.Background(), order("1001")); err != nil {
		t.Fatalf("Execute: %v", err)
	}
	got := exists(t, client, prefix+"order:1001", prefix+"order:1002", prefix+"customer:42:orders", prefix+"customer:43:orders")
	want := map[string]bool{prefix + "order:1001": false, prefix + "order:1002": true, prefix + "customer:42:orders": false, prefix + "customer:43:orders": true}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("after Execute, key %s exists = %v, want %v", k, got[k], w)
		}
	}
	// The result cache is per event, so a later event deletes again.
	set(t, client, prefix+"order:1001")
	if err := a.Execute(context.Background(), order("1001")); err != nil {
		t.Fatalf("second Execute: %v", err)
	}
	if exists(t, client, prefix+"order:1001")[prefix+"order:1001"] {
		t.Error("the second Execute left order:1001")
	}
}

// unlinkRecorder counts the keys of every UNLINK command.
type unlinkRecorder struct {
	mu    sync.Mutex
	sizes []int
}

func (r *unlinkRecorder) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r *unlinkRecorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (r *unlinkRecorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "unlink" {
			r.mu.Lock()
			r.sizes = append(r.sizes, len(cmd.Args())-1)
			r.mu.Unlock()
		}
		return next(ctx, cmd)
	}
}

func TestPatternDeletesInBatches(t *testing.T) {
	t.Parallel()
	client, prefix := testenv.Redis(t)
	const n = 1200
	keys := make([]string, 0, n)
	for i := range n {
		keys = append(keys, fmt.Sprintf("%sorders:list:%d", prefix, i))
	}
	set(t, client, keys...)
	kept := []string{prefix + "orders:listing", prefix + "orders:list", prefix + "order:1001"}
	set(t, client, kept...)

	rec := &unlinkRecorder{}
	client.AddHook(rec)
	a := build(t, client, config.Action{"prefix": prefix, "keys": []any{"orders:list:*"}})
	if err := a.Execute(context.Background(), order("1001")); err != nil {
		t.Fatalf("Execute: %v", err)
	}

	left, err := client.Keys(context.Background(), prefix+"orders:list:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("%d of %d matching keys left, e.g. %s", len(left), n, left[0])
	}
	for k, ok := range exists(t, client, kept...) {
		if !ok {
			t.Errorf("key %s, which does not match, was deleted", k)
		}
	}
	rec.mu.Lock()
	sizes := slices.Clone(rec.sizes)
	rec.mu.Unlock()
	total := 0
	for _, s := range sizes {
		total += s
		if s > cacheinvalidate.BatchSize {
			t.Errorf("an UNLINK carried %d keys, more than the batch size %d", s, cacheinvalidate.BatchSize)
		}
	}
	if len(sizes) < 3 || total < n {
		t.Errorf("UNLINK batches %v: want at least 3 batches and %d keys in all", sizes, n)
	}
}

func TestEventValuesAreEscapedInPatterns(t *testing.T) {
	t.Parallel()
	client, prefix := testenv.Redis(t)
	for _, id := range []string{"*", "?", "[0-9]", `\*`} {
		t.Run(id, func(t *testing.T) {
			p := prefix + fmt.Sprintf("%x:", id)
			other := []string{p + "order:1", p + "order:2", p + "order:1:lines:a", p + "order:2:lines:b", p + `order:"1":x`}
			quoted, _ := json.Marshal(id)
			own := []string{p + "order:" + id, p + "order:" + id + ":lines:x", p + "order:" + string(quoted) + ":x"}
			set(t, client, append(slices.Clone(other), own...)...)
			a := build(t, client, config.Action{
				"prefix": p,
				// json re-quotes its input: the escaping must survive it.
				"keys": []any{"order:{{.entity_id}}", "order:{{.entity_id}}:lines:*", "order:{{json .entity_id}}:*"},
			})
			if err := a.Execute(context.Background(), order(id)); err != nil {
				t.Fatalf("Execute: %v", err)
			}
			for k, ok := range exists(t, client, other...) {
				if !ok {
					t.Errorf("entity_id %q deleted %s", id, k)
				}
			}
			for k, ok := range exists(t, client, own...) {
				if ok {
					t.Errorf("entity_id %q left its own key %s", id, k)
				}
			}
		})
	}
}

func TestTemplateFunctions(t *testing.T) {
	t.Parallel()
	client, prefix := testenv.Redis(t)
	set(t, client, prefix+"user:ann@example.com", prefix+"user:ann@example.com:sessions:1", prefix+"tenant:none:x")
	a := build(t, client, config.Action{
		"prefix": prefix,
		"keys":   []any{"user:{{lower .data.email}}", "user:{{lower .data.email}}:sessions:*", "tenant:{{default \"none\" .tenant_id}}:*"},
	})
	ev := order("1")
	ev.Data["email"] = "Ann@Example.com"
	if err := a.Execute(context.Background(), ev); err != nil {
		t.Fatalf("Execute: %v", err)
	}
	for k, ok := range exists(t, client, prefix+"user:ann@example.com", prefix+"user:ann@example.com:sessions:1", prefix+"tenant:none:x") {
		if ok {
			t.Errorf("key %s was not deleted", k)
		}
	}
}

func TestPrefixIsLiteralInPatterns(t *testing.T) {
	t.Parallel()
	client, prefix := testenv.Redis(t)
	set(t, client, prefix+"a*:x:1", prefix+"ab:x:1")
	a := build(t, client, config.Action{"prefix": prefix + "a*:", "keys": []any{"x:*"}})
	if err := a.Execute(context.Background(), order("1")); err != nil {
		t.Fatalf("Execute: %v", err)
	}
	got := exists(t, client, prefix+"a*:x:1", prefix+"ab:x:1")
	if got[prefix+"a*:x:1"] || !got[prefix+"ab:x:1"] {
		t.Errorf("with prefix %q: a*:x:1 exists %v (want false), ab:x:1 exists %v (want true)", prefix+"a*:", got[prefix+"a*:x:1"], got[prefix+"ab:x:1"])
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	client, prefix := testenv.Redis(t)
	t.Run("a template that fails on the event is permanent", func(t *testing.T) {
		a := build(t, client, config.Action{"prefix": prefix, "keys": []any{"order:{{.data.name.first}}"}})
		err := a.Execute(context.Background(), order("1"))
		if err == nil || !handlers.IsPermanent(err) || !strings.Contains(err.Error(), "keys[0]") {
			t.Errorf("Execute = %v, want a permanent error naming keys[0]", err)
		}
	})
	t.Run("an unreachable server is transient", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		_ = l.Close()
		down := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		defer func() { _ = down.Close() }()
		for _, key := range []string{"order:1", "orders:*"} {
			a := build(t, down, config.Action{"keys": []any{key}})
			err := a.Execute(context.Background(), order("1"))
			if err == nil || handlers.IsPermanent(err) {
				t.Errorf("Execute(%s) = %v, want a transient error", key, err)
			}
		}
	})
}

func TestBuildNeedsRedisSection(t *testing.T) {
	t.Parallel()
	reg := registry(t)
	spec, err := reg.Decode(path, config.Action{"type": "cache_invalidate", "keys": []any{"k"}})
	if err != nil {
		t.Fatal(err)
	}
	called := false
	_, err = reg.Build(context.Background(), spec, handlers.Deps{
		Config: config.Default(),
		Redis:  func() (redis.UniversalClient, error) { called = true; return nil, nil },
	})
	if err == nil || !strings.Contains(err.Error(), "redis.url") || !strings.Contains(err.Error(), path) {
		t.Errorf("Build = %v, want an error naming redis.url and %s", err, path)
	}
	if called {
		t.Error("Build asked for a client although [redis] is not configured")
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	reg := registry(t)
	valid := func() config.Action {
		return config.Action{"type": "cache_invalidate", "keys": []any{"order:{{.entity_id}}", "orders:*"}}
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
		{"keys missing", func(a config.Action) { delete(a, "keys") }, p + "keys: at least one key"},
		{"keys empty", func(a config.Action) { a["keys"] = []any{} }, p + "keys: at least one key"},
		{"key does not parse", func(a config.Action) { a["keys"] = []any{"a", "order:{{.entity_id"} }, p + "keys[1]: template does not parse"},
		{"every key", func(a config.Action) { a["keys"] = []any{"*"} }, p + "keys[0]: \"*\" would delete every key"},
		{"glob_escape in a pattern", func(a config.Action) { a["keys"] = []any{"orders:{{glob_escape .entity_id}}:*"} }, p + "keys[0]: glob_escape is not needed"},
		{"glob_escape in a literal key", func(a config.Action) { a["keys"] = []any{"order:{{.entity_id | glob_escape}}"} }, p + "keys[0]: glob_escape is not needed"},
		{"unknown function", func(a config.Action) { a["keys"] = []any{"order:{{shout .entity_id}}"} }, p + "keys[0]: template does not parse"},
		{"keys not a list", func(a config.Action) { a["keys"] = int64(1) }, p + "keys: must be a list"},
		{"unknown key", func(a config.Action) { a["pattern"] = "x" }, p + "pattern: unknown key"},
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

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		"plain:1": "plain:1", "*": "[*]", "a?b": "a[?]b", "[x]": "[[]x]", `back\slash`: `back\\slash`,
	} {
		if got := cacheinvalidate.Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}
