package jetstream_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/bus/bustest"
	"github.com/millrace/millrace/bus/jetstream"
	"github.com/millrace/millrace/internal/testenv"
)

// busConfig returns a config on a fresh stream of the test's own.
func busConfig(t testing.TB, js njs.JetStream, prefix, group string) jetstream.Config {
	t.Helper()
	cfg := jetstream.Config{
		Stream: strings.ToUpper(prefix), SubjectPrefix: prefix, Consumer: group,
		AckWait: 5 * time.Second, MaxDeliver: -1, MaxAge: time.Hour, Replicas: 1,
		DuplicateWindow: time.Minute, MaxInFlight: 16, DrainTimeout: 500 * time.Millisecond, Memory: true,
	}
	if _, err := jetstream.EnsureStream(context.Background(), js, cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestPubSub(t *testing.T) {
	_, js, prefix := testenv.NATS(t)
	newPubSub := func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
		cfg := busConfig(t, js, prefix, group)
		return jetstream.NewPublisher(js, cfg), jetstream.NewSubscriber(js, cfg, nil, nil)
	}
	tests.TestPubSub(t,
		tests.Features{
			ConsumerGroups: true,
			// Messages without an ordering key share their subject's lane,
			// so one subscriber releases a topic's messages in stream order.
			GuaranteedOrder:                     true,
			GuaranteedOrderWithSingleSubscriber: true,
			Persistent:                          true,
			// Nats-Msg-Id drops a republished id, but a redelivery after a
			// lost ack is still possible.
			ExactlyOnceDelivery: false,
			// Subscribers of one group share a durable consumer.
			NewSubscriberReceivesOldMessages: false,
		},
		func(t *testing.T) (message.Publisher, message.Subscriber) { return newPubSub(t, "suite") },
		newPubSub,
	)
}

// TestConformance runs the bus suite: order per key, nack with delay
// before the key's next message, partitions across workers.
func TestConformance(t *testing.T) {
	bustest.Run(t, bustest.Factory{
		New: func(t *testing.T) (message.Publisher, message.Subscriber) {
			_, js, prefix := testenv.NATS(t)
			cfg := busConfig(t, js, prefix, "conformance")
			return jetstream.NewPublisher(js, cfg), jetstream.NewSubscriber(js, cfg, nil, nil)
		},
		Partitioned: func(t *testing.T) (message.Publisher, func(string) message.Subscriber) {
			_, js, prefix := testenv.NATS(t)
			cfg := busConfig(t, js, prefix, "workers")
			cfg.Partitions, cfg.PartitionTTL = 6, time.Second
			if _, err := jetstream.EnsureStream(context.Background(), js, cfg); err != nil {
				t.Fatal(err)
			}
			return jetstream.NewPublisher(js, cfg), func(member string) message.Subscriber {
				c := cfg
				c.Member = member
				return jetstream.NewSubscriber(js, c, nil, nil)
			}
		},
	})
}

// TestDuplicateIDDropped: the stream drops a message whose id it has
// already stored within its duplicate window.
func TestDuplicateIDDropped(t *testing.T) {
	_, js, prefix := testenv.NATS(t)
	cfg := busConfig(t, js, prefix, "dup")
	pub := jetstream.NewPublisher(js, cfg)
	for range 3 {
		if err := pub.Publish("events", message.NewMessage("00000000-0000-4000-8000-000000000009", []byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	s, err := js.Stream(context.Background(), cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages; want 1", info.State.Msgs)
	}
}

// TestPartitionSubjectKeepsTheSuffixTokens: with partitions the subject
// is <prefix>.<topic>.<p>.<suffix>, the suffix's tokens as they are.
func TestPartitionSubjectKeepsTheSuffixTokens(t *testing.T) {
	_, js, prefix := testenv.NATS(t)
	cfg := busConfig(t, js, prefix, "subj")
	cfg.Partitions = 4
	if _, err := jetstream.EnsureStream(context.Background(), js, cfg); err != nil {
		t.Fatal(err)
	}
	m := message.NewMessage("00000000-0000-4000-8000-000000000042", []byte("x"))
	m.Metadata.Set(bus.KeyMetadata, "orders_db/Order/42")
	m.Metadata.Set(bus.SubjectMetadata, "orders_db.Order.UPDATE")
	if err := jetstream.NewPublisher(js, cfg).Publish("events", m); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(context.Background(), cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.GetMsg(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	want := cfg.PartitionSubject("events", "orders_db/Order/42", "orders_db.Order.UPDATE")
	if !strings.HasSuffix(want, ".orders_db.Order.UPDATE") || got.Subject != want {
		t.Fatalf("subject %q (PartitionSubject %q); want %s.events.<p>.orders_db.Order.UPDATE", got.Subject, want, prefix)
	}
}
