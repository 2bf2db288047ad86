package drivers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/bus/watermill"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/topologies"
	natstopology "github.com/millrace/millrace/topologies/nats"
	redistopology "github.com/millrace/millrace/topologies/redis"
)

// backend builds topology's backend on the upstream driver, on the
// test's own stream, subjects or keys.
func backend(t *testing.T, topology string) *topologies.Backend {
	t.Helper()
	cfg := config.Default()
	cfg.Topology = topology
	cfg.Role = "observe"
	cfg.Bus.Driver = config.DriverWatermill
	cfg.Router.MaxInFlight = 1
	cfg.Router.ShutdownTimeout = config.Duration(time.Second)
	switch topology {
	case "nats":
		_, _, prefix := testenv.NATS(t)
		cfg.NATS.URL = testenv.NATSURL()
		cfg.NATS.Stream = strings.ToUpper(prefix) + "_EVENTS"
		cfg.NATS.SubjectPrefix, cfg.NATS.Consumer = prefix, prefix
	case "redis":
		_, prefix := testenv.Redis(t)
		cfg.Redis.URL = testenv.RedisURL()
		cfg.Redis.KeyPrefix = prefix
	}
	reg := topologies.NewRegistry()
	if err := natstopology.Register(reg); err != nil {
		t.Fatal(err)
	}
	if err := redistopology.Register(reg); err != nil {
		t.Fatal(err)
	}
	b, err := reg.Build(context.Background(), cfg, nil)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return b
}

// The metadata a handler reads comes through the upstream driver: the
// ordering key, tenant and any other; NATS also numbers the deliveries
// (bus.DeliveryMetadata), Redis does not. A nacked message comes back
// after watermill.NackDelay, whatever delay the handler asked for in
// bus.RetryDelayMetadata: an expected difference from millrace's buses.
func TestUpstreamDriverMetadataAndNack(t *testing.T) {
	for _, topology := range []string{"nats", "redis"} {
		t.Run(topology, func(t *testing.T) {
			t.Parallel()
			b := backend(t, topology)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			msgs, err := b.Subscriber.Subscribe(ctx, "events")
			if err != nil {
				t.Fatal(err)
			}
			m := message.NewMessage(uuid.NewString(), []byte(`{}`))
			bus.Route(m, "shop", "Order", "7", "acme", "UPDATE")
			m.Metadata.Set("custom", "value")
			if err := b.Publisher.Publish("events", m); err != nil {
				t.Fatal(err)
			}
			first := receive(t, msgs)
			if first.UUID != m.UUID {
				t.Fatalf("received %s, want %s", first.UUID, m.UUID)
			}
			for _, k := range []string{bus.KeyMetadata, bus.TenantMetadata, "custom"} {
				if got, want := first.Metadata.Get(k), m.Metadata.Get(k); got != want {
					t.Errorf("metadata %s = %q, want %q", k, got, want)
				}
			}
			wantDelivery := map[string][2]string{"nats": {"1", "2"}, "redis": {"", ""}}[topology]
			if got := first.Metadata.Get(bus.DeliveryMetadata); got != wantDelivery[0] {
				t.Errorf("first delivery: %s = %q, want %q", bus.DeliveryMetadata, got, wantDelivery[0])
			}

			const asked = 5 * time.Second
			first.Metadata.Set(bus.RetryDelayMetadata, asked.String())
			nacked := time.Now()
			first.Nack()
			second := receive(t, msgs)
			waited := time.Since(nacked)
			second.Ack()
			if second.UUID != m.UUID {
				t.Fatalf("redelivered %s, want %s", second.UUID, m.UUID)
			}
			if waited < watermill.NackDelay-100*time.Millisecond || waited >= asked-time.Second {
				t.Errorf("redelivered after %s; the upstream driver waits its fixed %s, not the %s asked",
					waited.Round(time.Millisecond), watermill.NackDelay, asked)
			}
			if got := second.Metadata.Get(bus.DeliveryMetadata); got != wantDelivery[1] {
				t.Errorf("second delivery: %s = %q, want %q", bus.DeliveryMetadata, got, wantDelivery[1])
			}
			t.Logf("%s: redelivered after %s (asked %s)", topology, waited.Round(time.Millisecond), asked)
		})
	}
}

func receive(t *testing.T, msgs <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case m, ok := <-msgs:
		if !ok {
			t.Fatal("subscription closed")
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatalf("no message within %s", 10*time.Second)
	}
	return nil
}
