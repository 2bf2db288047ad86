package redisstream_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/millrace/millrace/bus/bustest"

	"github.com/millrace/millrace/bus"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/bus/redisstream"
	"github.com/millrace/millrace/internal/testenv"
)

func TestPubSubPartitioned(t *testing.T) {
	_, prefix := testenv.Redis(t)
	newPubSub := func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
		c := newClient(t, testenv.RedisURL())
		// As in TestPubSub; a subscriber that closes releases its
		// partitions at once, and the next takes over what it left
		// pending without waiting for ClaimIdle.
		cfg := redisstream.Config{
			Prefix: prefix, Group: group, ClaimIdle: 3 * time.Second, MaxInFlight: 16, Batch: 100,
			Block: 100 * time.Millisecond, DrainTimeout: 200 * time.Millisecond,
			Partitions: 4, PartitionTTL: time.Second,
		}
		return redisstream.NewPublisher(c, cfg), redisstream.NewSubscriber(c, cfg, nil)
	}
	features := tests.Features{
		ConsumerGroups: true,
		// The suite publishes messages without an ordering key: each goes
		// to the partition of its UUID, so they spread over the
		// partitions and no order holds among them. This leaves out
		// TestPublishSubscribeInOrder and TestNoAck (which waits for an
		// ack before the next message); both run below with keyed
		// messages.
		GuaranteedOrder:                     false,
		GuaranteedOrderWithSingleSubscriber: false,
		Persistent:                          true,
		ExactlyOnceDelivery:                 false,
		NewSubscriberReceivesOldMessages:    false,
	}
	tests.TestPubSub(t, features,
		func(t *testing.T) (message.Publisher, message.Subscriber) { return newPubSub(t, "suite") },
		newPubSub,
	)

	// Messages of one ordering key share a partition and keep their
	// order, across subscribers too: the order tests hold when the
	// publisher keys each message by its payload, which is what they
	// check the order of. Without GuaranteedOrderWithSingleSubscriber,
	// TestPublishSubscribeInOrder reads through 10 subscribers that
	// start together, so the partitions move while messages flow.
	keyed := features
	keyed.GuaranteedOrder = true
	keyedPubSub := func(t *testing.T) (message.Publisher, message.Subscriber) {
		pub, sub := newPubSub(t, "keyed")
		return payloadKey{pub}, sub
	}
	for name, test := range map[string]func(*testing.T, tests.TestContext, tests.PubSubConstructor){
		"TestPublishSubscribeInOrder": tests.TestPublishSubscribeInOrder,
		"TestNoAck":                   tests.TestNoAck,
	} {
		t.Run("keyed/"+name, func(t *testing.T) {
			t.Parallel()
			test(t, tests.TestContext{TestID: tests.NewTestID(), Features: keyed}, keyedPubSub)
		})
	}
}

// payloadKey publishes every message with its payload as its ordering
// key.
type payloadKey struct{ message.Publisher }

func (p payloadKey) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		m.Metadata.Set(bus.KeyMetadata, string(m.Payload))
	}
	return p.Publisher.Publish(topic, msgs...)
}

// The publisher puts each key in one partition stream, and the streams
// of every key together hold every message once.
func TestPublishToPartitionStreams(t *testing.T) {
	c, prefix := testenv.Redis(t)
	cfg := redisstream.Config{Prefix: prefix, Partitions: 4}
	msgs := newMessages(200, func(i int) string { return "k" + strconv.Itoa(i%10) })
	msgs = append(msgs, message.NewMessage("no-key", []byte("x")))
	if err := redisstream.NewPublisher(c, cfg).Publish("events", msgs...); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	streamOf := map[string]string{} // key → stream
	total := 0
	for p := range 4 {
		stream := prefix + "events:p" + strconv.Itoa(p)
		entries, err := c.XRange(ctx, stream, "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		total += len(entries)
		for _, e := range entries {
			key, _ := e.Values["key"].(string)
			if key == "" {
				key = e.Values["uuid"].(string)
			}
			if want := cfg.PartitionStream("events", key); want != stream {
				t.Errorf("key %s in %s, want %s", key, stream, want)
			}
			if s, ok := streamOf[key]; ok && s != stream {
				t.Errorf("key %s in both %s and %s", key, s, stream)
			}
			streamOf[key] = stream
		}
	}
	if total != len(msgs) {
		t.Errorf("%d entries in the partition streams, want %d", total, len(msgs))
	}
	if n, _ := c.Exists(ctx, prefix+"events").Result(); n != 0 {
		t.Errorf("the unpartitioned stream %sevents exists", prefix)
	}
}

// waitPendingStreams waits until the entries pending in the group on
// topic's streams (the partitions' when cfg has some) number want.
func waitPendingStreams(t *testing.T, c *redis.Client, cfg redisstream.Config, topic string, want int64) {
	t.Helper()
	streams := []string{cfg.Stream(topic)}
	if cfg.Partitions > 0 {
		streams = streams[:0]
		for p := range cfg.Partitions {
			streams = append(streams, cfg.Stream(topic)+":p"+strconv.Itoa(p))
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got int64
		for _, s := range streams {
			if n, err := c.Exists(context.Background(), s).Result(); err == nil && n == 1 {
				got += pending(t, c, s, cfg.Group)
			}
		}
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pending entries = %d, want %d", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A worker that dies holding a partition (it read entries and never
// acked them, and it neither renews nor releases its lease) loses the
// partition when the lease runs out; the next owner takes over what it
// left pending and releases it, per key in stream order, before the
// entries published after the crash. ClaimIdle is an hour: the entries
// come back through the take-over, not the idle sweep.
func TestPartitionTakeOverFromCrashedOwner(t *testing.T) {
	c, prefix := testenv.Redis(t)
	const keys, before, after = 4, 5, 5
	cfg := redisstream.Config{
		Prefix: prefix, Group: "workers", ClaimIdle: time.Hour, Block: 100 * time.Millisecond,
		DrainTimeout: 200 * time.Millisecond, Partitions: 2, PartitionTTL: time.Second,
	}
	pub := redisstream.NewPublisher(c, cfg)
	publish := func(from, n int) {
		var msgs []*message.Message
		for i := from; i < from+n; i++ {
			for k := range keys {
				m := message.NewMessage(fmt.Sprintf("k%d-%d", k, i), []byte(strconv.Itoa(i)))
				m.Metadata.Set(bus.KeyMetadata, "k"+strconv.Itoa(k))
				msgs = append(msgs, m)
			}
		}
		if err := pub.Publish("events", msgs...); err != nil {
			t.Fatal(err)
		}
	}
	publish(0, before)

	// The worker that dies: it reads every entry (the first of each key
	// reaches its handler, the others wait in their lanes) and acks none.
	deadCfg := cfg
	deadCfg.Consumer = "dead"
	deadClient := newClient(t, testenv.RedisURL())
	dead := redisstream.NewSubscriber(deadClient, deadCfg, nil)
	defer dead.Close()
	deadCh, err := dead.Subscribe(context.Background(), "events")
	if err != nil {
		t.Fatal(err)
	}
	firsts := map[string]bool{}
	for len(firsts) < keys {
		m := bustest.Recv(t, deadCh, 10*time.Second)
		firsts[m.UUID] = true
	}
	waitPendingStreams(t, c, cfg, "events", keys*before)
	// It dies: it loses Redis, so it can neither ack, renew nor release.
	if err := deadClient.Close(); err != nil {
		t.Fatal(err)
	}
	publish(before, after)

	nextCfg := cfg
	nextCfg.Consumer = "next"
	next := redisstream.NewSubscriber(newClient(t, testenv.RedisURL()), nextCfg, nil)
	defer next.Close()
	ch, err := next.Subscribe(context.Background(), "events")
	if err != nil {
		t.Fatal(err)
	}
	seqs := map[string][]int{}
	for range keys * (before + after) {
		m := bustest.Recv(t, ch, 15*time.Second)
		key := m.Metadata.Get(bus.KeyMetadata)
		seq, _ := strconv.Atoi(string(m.Payload))
		seqs[key] = append(seqs[key], seq)
		// Taken-over entries carry no delivery count; new ones do.
		if delivery := m.Metadata.Get(bus.DeliveryMetadata); (seq < before) != (delivery == "") {
			t.Errorf("%s: event %d has delivery count %q; taken over: %v", key, seq, delivery, seq < before)
		}
		m.Ack()
	}
	for k := range keys {
		key := "k" + strconv.Itoa(k)
		want := make([]int, before+after)
		for i := range want {
			want[i] = i
		}
		if !slices.Equal(seqs[key], want) {
			t.Errorf("%s: the next owner handled %v, want %v", key, seqs[key], want)
		}
	}
	waitPendingStreams(t, c, cfg, "events", 0)
}
