package redis_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/middleware"
	"github.com/millrace/millrace/test/testenv"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/redis"
)

// The bus is the stream <key_prefix><topic> read by redis.group, and the
// stores are in the same Redis under the key prefix.
func TestBackend(t *testing.T) {
	c, prefix := testenv.Redis(t)
	cfg := config.Default()
	cfg.Topology = "redis"
	cfg.Role = "observe"
	cfg.Redis.URL = testenv.RedisURL()
	cfg.Redis.KeyPrefix = prefix
	cfg.Redis.Group = "workers"
	cfg.Router.ShutdownTimeout = config.Duration(time.Second)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := topologies.NewRegistry()
	if err := redis.Register(reg); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b, err := reg.Build(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := b.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	if _, ok := b.Dedup.(*middleware.RedisStore); !ok {
		t.Errorf("dedup %T, want *middleware.RedisStore", b.Dedup)
	}
	if err := b.Ready(ctx); err != nil {
		t.Errorf("ready: %v", err)
	}
	id, err := b.DeadLetters.Put(ctx, middleware.DeadLetter{Observer: "o", Reason: middleware.ReasonExhausted, Payload: []byte("{}")})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := c.XLen(ctx, prefix+"dlq").Result(); err != nil || n != 1 {
		t.Errorf("dead letter %s: stream %sdlq holds %d entries (%v), want 1", id, prefix, n, err)
	}

	if err := b.Publisher.Publish("events", message.NewMessage("5f0c9c1e-8a55-4d8a-9c1b-1e2f3a4b5c6d", []byte("{}"))); err != nil {
		t.Fatal(err)
	}
	ch, err := b.Subscriber.Subscribe(ctx, "events")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-ch:
		m.Ack()
	case <-time.After(10 * time.Second):
		t.Fatal("nothing received")
	}
	groups, err := c.XInfoGroups(ctx, prefix+"events").Result()
	if err != nil || len(groups) != 1 || groups[0].Name != "workers" {
		t.Errorf("groups on %sevents: %+v, %v; want workers", prefix, groups, err)
	}
}
