package redis_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/millrace/millrace/stores"

	"github.com/millrace/millrace/bus"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/internal/testenv"
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
	if _, ok := b.Dedup.(*stores.RedisStore); !ok {
		t.Errorf("dedup %T, want *stores.RedisStore", b.Dedup)
	}
	if err := b.Ready(ctx); err != nil {
		t.Errorf("ready: %v", err)
	}
	id, err := b.DeadLetters.Put(ctx, stores.DeadLetter{Observer: "o", Reason: stores.ReasonExhausted, Payload: []byte("{}")})
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

// With redis.partitions the bus writes each entity to the stream of its
// partition, <key_prefix><topic>:p<k>, and the worker leases and reads
// them; the client's pool makes room for one blocking read per partition.
func TestBackendPartitioned(t *testing.T) {
	c, prefix := testenv.Redis(t)
	cfg := config.Default()
	cfg.Topology = "redis"
	cfg.Role = "observe"
	cfg.Redis.URL = testenv.RedisURL()
	cfg.Redis.KeyPrefix = prefix
	cfg.Redis.Partitions = 4
	cfg.Redis.PartitionTTL = config.Duration(time.Second)
	cfg.Router.ShutdownTimeout = config.Duration(time.Second)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	bc := redis.BusConfig(cfg)
	if bc.Partitions != 4 || bc.PartitionTTL != time.Second {
		t.Fatalf("BusConfig: partitions %d, partition TTL %s; want 4, 1s", bc.Partitions, bc.PartitionTTL)
	}
	client, err := topologies.NewRedisClient(cfg.Redis)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if got, want := client.Options().PoolSize, 10*runtime.GOMAXPROCS(0)+4; got != want {
		t.Errorf("pool size %d, want %d", got, want)
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
	m := message.NewMessage("5f0c9c1e-8a55-4d8a-9c1b-1e2f3a4b5c6d", []byte("{}"))
	m.Metadata.Set(bus.KeyMetadata, "orders_db\x00Order\x0042")
	if err := b.Publisher.Publish("events", m); err != nil {
		t.Fatal(err)
	}
	stream := bc.PartitionStream("events", "orders_db\x00Order\x0042")
	if n, err := c.XLen(ctx, stream).Result(); err != nil || n != 1 {
		t.Errorf("stream %s holds %d entries (%v), want 1", stream, n, err)
	}
	ch, err := b.Subscriber.Subscribe(ctx, "events")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-ch:
		got.Ack()
		if got.UUID != m.UUID {
			t.Errorf("received %s, want %s", got.UUID, m.UUID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing received")
	}
}
