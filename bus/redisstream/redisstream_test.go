package redisstream_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/bus"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/bus/bustest"
	"github.com/millrace/millrace/bus/redisstream"
	"github.com/millrace/millrace/internal/testenv"
)

// newClient returns a client of its own on the test Redis, closed when
// the test ends.
func newClient(t testing.TB, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestPubSub(t *testing.T) {
	_, prefix := testenv.Redis(t)
	newPubSub := func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
		c := newClient(t, testenv.RedisURL())
		// Short Block and DrainTimeout: the suite closes subscribers
		// one after another with messages still in flight. ClaimIdle is
		// short too (messages left by a closed subscriber come back
		// after it), but must leave room for touching under -race.
		cfg := redisstream.Config{
			Prefix: prefix, Group: group, ClaimIdle: 3 * time.Second, MaxInFlight: 16, Batch: 100,
			Block: 100 * time.Millisecond, DrainTimeout: 200 * time.Millisecond,
		}
		return redisstream.NewPublisher(c, cfg), redisstream.NewSubscriber(c, cfg, nil)
	}
	tests.TestPubSub(t,
		tests.Features{
			ConsumerGroups: true,
			// Messages without an ordering key share one lane per topic,
			// so one subscriber releases them in stream order and one at
			// a time; subscribers sharing a group split the stream.
			GuaranteedOrder:                     true,
			GuaranteedOrderWithSingleSubscriber: true,
			Persistent:                          true,
			ExactlyOnceDelivery:                 false,
			// Subscribers share the consumer group, so a new one does
			// not get what the group already consumed.
			NewSubscriberReceivesOldMessages: false,
		},
		func(t *testing.T) (message.Publisher, message.Subscriber) { return newPubSub(t, "suite") },
		newPubSub,
	)
}

// TestConformance runs the bus suite: order per key, nack with delay
// before the key's next message, partitions across workers. After each
// subtest nothing is left pending in the group.
func TestConformance(t *testing.T) {
	bustest.Run(t, bustest.Factory{
		New: func(t *testing.T) (message.Publisher, message.Subscriber) {
			c, prefix := testenv.Redis(t)
			cfg := redisstream.Config{Prefix: prefix, Group: "millrace", MaxInFlight: 8, Batch: 50, DrainTimeout: time.Second}
			settled(t, c, cfg)
			return redisstream.NewPublisher(c, cfg), redisstream.NewSubscriber(c, cfg, nil)
		},
		Partitioned: func(t *testing.T) (message.Publisher, func(string) message.Subscriber) {
			c, prefix := testenv.Redis(t)
			cfg := redisstream.Config{
				Prefix: prefix, Group: "workers", MaxInFlight: 4, Batch: 50, Block: 100 * time.Millisecond,
				ClaimIdle: time.Second, DrainTimeout: 5 * time.Second,
				Partitions: 6, PartitionTTL: time.Second,
			}
			settled(t, c, cfg)
			return redisstream.NewPublisher(c, cfg), func(member string) message.Subscriber {
				wc := cfg
				wc.Consumer = member
				// A client of its own: a process of its own.
				return redisstream.NewSubscriber(newClient(t, testenv.RedisURL()), wc, nil)
			}
		},
	})
}

// settled checks, when a passing test ends, that no entry of the suite's
// topic is left pending in cfg's group.
func settled(t *testing.T, c *redis.Client, cfg redisstream.Config) {
	t.Cleanup(func() {
		if !t.Failed() {
			waitPendingStreams(t, c, cfg, bustest.Topic, 0)
		}
	})
}

// pending returns the number of entries pending in the group.
func pending(t *testing.T, c *redis.Client, stream, group string) int64 {
	t.Helper()
	p, err := c.XPending(context.Background(), stream, group).Result()
	if err != nil {
		t.Fatalf("XPENDING: %v", err)
	}
	return p.Count
}

func waitPending(t *testing.T, c *redis.Client, stream, group string, want int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := pending(t, c, stream, group)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pending entries = %d, want %d", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func newMessages(n int, key func(i int) string) []*message.Message {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(fmt.Sprintf("00000000-0000-4000-8000-%012d", i), []byte(strconv.Itoa(i)))
		if key != nil {
			msgs[i].Metadata.Set(bus.KeyMetadata, key(i))
		}
	}
	return msgs
}

func TestRoundTripKeepsUUIDPayloadAndMetadata(t *testing.T) {
	c, prefix := testenv.Redis(t)
	cfg := redisstream.Config{Prefix: prefix, DrainTimeout: time.Second}
	pub, sub := redisstream.NewPublisher(c, cfg), redisstream.NewSubscriber(c, cfg, nil)
	defer sub.Close()
	in := message.NewMessage("2b5c0f6e-8b7a-4c8e-9d3e-4f7a9b1c2d3e", []byte(`{"a":1}`))
	in.Metadata.Set(bus.KeyMetadata, "db\x00Order\x0042")
	in.Metadata.Set("trace", "abc")
	in.Metadata.Set(bus.SubjectMetadata, "db.Order.INSERT")
	if err := pub.Publish("events", in); err != nil {
		t.Fatal(err)
	}
	ch, err := sub.Subscribe(context.Background(), "events")
	if err != nil {
		t.Fatal(err)
	}
	m := bustest.Recv(t, ch, 5*time.Second)
	m.Ack()
	if m.UUID != in.UUID || string(m.Payload) != string(in.Payload) {
		t.Errorf("got %s %q, want %s %q", m.UUID, m.Payload, in.UUID, in.Payload)
	}
	for k, want := range map[string]string{bus.KeyMetadata: "db\x00Order\x0042", "trace": "abc", bus.DeliveryMetadata: "1", bus.SubjectMetadata: ""} {
		if got := m.Metadata.Get(k); got != want {
			t.Errorf("metadata %q = %q, want %q", k, got, want)
		}
	}
	if m.Metadata.Get(redisstream.EntryMetadata) == "" {
		t.Errorf("metadata %q is empty", redisstream.EntryMetadata)
	}
	waitPending(t, c, prefix+"events", "millrace", 0)
}

// A consumer that read entries and died (it never acks nor touches them)
// loses them to a live consumer after ClaimIdle; entries a live consumer
// holds, even longer than ClaimIdle, are not taken from it.
func TestClaimFromDeadConsumer(t *testing.T) {
	c, prefix := testenv.Redis(t)
	ctx := context.Background()
	stream := prefix + "events"
	cfg := redisstream.Config{Prefix: prefix, Group: "workers", ClaimIdle: 300 * time.Millisecond, ClaimInterval: 50 * time.Millisecond, DrainTimeout: time.Second}
	pub := redisstream.NewPublisher(c, cfg)
	if err := pub.Publish("events", newMessages(20, func(i int) string { return strconv.Itoa(i) })...); err != nil {
		t.Fatal(err)
	}
	if err := redisstream.NewSubscriber(c, cfg, nil).SubscribeInitialize("events"); err != nil {
		t.Fatal(err)
	}
	// The dead worker: reads everything and is never heard of again.
	res, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "dead", Streams: []string{stream, ">"}, Count: 100, Block: -1}).Result()
	if err != nil || len(res[0].Messages) != 20 {
		t.Fatalf("dead worker read %v, %v; want 20 entries", res, err)
	}

	liveCfg := cfg
	liveCfg.Consumer = "live"
	live := redisstream.NewSubscriber(c, liveCfg, nil)
	defer live.Close()
	ch, err := live.Subscribe(ctx, "events")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for len(got) < 20 {
		m := bustest.Recv(t, ch, 10*time.Second)
		got[m.UUID] = true
		m.Ack()
	}
	waitPending(t, c, stream, "workers", 0)

	// Now a live holder: one message kept unacked for 5 × ClaimIdle.
	if err := pub.Publish("events", newMessages(1, nil)...); err != nil {
		t.Fatal(err)
	}
	held := bustest.Recv(t, ch, 5*time.Second)
	otherCfg := cfg
	otherCfg.Consumer = "other"
	other := redisstream.NewSubscriber(c, otherCfg, nil)
	defer other.Close()
	och, err := other.Subscribe(ctx, "events")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-och:
		t.Fatalf("entry %s held by a live consumer was claimed by another", m.UUID)
	case <-time.After(5 * cfg.ClaimIdle):
	}
	held.Ack()
	waitPending(t, c, stream, "workers", 0)
}

// An entry without the expected fields comes out as a message carrying
// its raw fields, and the subscription goes on with the next entry.
func TestUndecodableEntryIsReleasedNotFatal(t *testing.T) {
	c, prefix := testenv.Redis(t)
	ctx := context.Background()
	stream := prefix + "events"
	cfg := redisstream.Config{Prefix: prefix, DrainTimeout: time.Second}
	badID, err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"foo", "bar"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	good := newMessages(1, nil)[0]
	if err := redisstream.NewPublisher(c, cfg).Publish("events", good); err != nil {
		t.Fatal(err)
	}
	sub := redisstream.NewSubscriber(c, cfg, nil)
	defer sub.Close()
	ch, err := sub.Subscribe(ctx, "events")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]*message.Message{}
	for range 2 {
		m := bustest.Recv(t, ch, 5*time.Second)
		seen[m.UUID] = m
		m.Ack()
	}
	bad, ok := seen[badID]
	if !ok {
		t.Fatalf("no message for the undecodable entry %s; got %v", badID, seen)
	}
	var fields map[string]string
	if err := json.Unmarshal(bad.Payload, &fields); err != nil || fields["foo"] != "bar" {
		t.Errorf("undecodable payload = %s (%v), want the raw fields", bad.Payload, err)
	}
	if bad.Metadata.Get(redisstream.UndecodableMetadata) == "" {
		t.Errorf("metadata %q not set on the undecodable message", redisstream.UndecodableMetadata)
	}
	if _, ok := seen[good.UUID]; !ok {
		t.Errorf("the entry after the undecodable one was not delivered")
	}
	waitPending(t, c, stream, "millrace", 0)
}

// A redelivered message carries its delivery count, which dead letters
// keep (the suite's NackWithDelay checks the delay and the order).
func TestNackCountsDeliveries(t *testing.T) {
	c, prefix := testenv.Redis(t)
	cfg := redisstream.Config{Prefix: prefix, DrainTimeout: time.Second}
	msgs := newMessages(1, func(int) string { return "same" })
	if err := redisstream.NewPublisher(c, cfg).Publish("events", msgs...); err != nil {
		t.Fatal(err)
	}
	sub := redisstream.NewSubscriber(c, cfg, nil)
	defer sub.Close()
	ch, err := sub.Subscribe(context.Background(), "events")
	if err != nil {
		t.Fatal(err)
	}
	for want := 1; want <= 3; want++ {
		m := bustest.Recv(t, ch, 5*time.Second)
		if m.UUID != msgs[0].UUID {
			t.Fatalf("delivery %d: got %s, want %s", want, m.UUID, msgs[0].UUID)
		}
		if got := m.Metadata.Get(bus.DeliveryMetadata); got != strconv.Itoa(want) {
			t.Errorf("delivery count = %q, want %d", got, want)
		}
		if want == 3 {
			m.Ack()
			break
		}
		m.Metadata.Set(bus.RetryDelayMetadata, "10ms")
		m.Nack()
	}
	waitPending(t, c, prefix+"events", "millrace", 0)
}

// A consumer that subscribes again under the same name reads back what
// it held unacked when it stopped, without waiting for ClaimIdle.
func TestResubscribeReadsBackOwnPending(t *testing.T) {
	c, prefix := testenv.Redis(t)
	cfg := redisstream.Config{Prefix: prefix, Consumer: "pod-0", ClaimIdle: time.Hour, DrainTimeout: 100 * time.Millisecond}
	msgs := newMessages(5, func(i int) string { return strconv.Itoa(i) })
	if err := redisstream.NewPublisher(c, cfg).Publish("events", msgs...); err != nil {
		t.Fatal(err)
	}
	first := redisstream.NewSubscriber(c, cfg, nil)
	ch, err := first.Subscribe(context.Background(), "events")
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		bustest.Recv(t, ch, 5*time.Second) // never acked
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if n := pending(t, c, prefix+"events", "millrace"); n != 5 {
		t.Fatalf("pending after close = %d, want 5", n)
	}
	second := redisstream.NewSubscriber(c, cfg, nil)
	defer second.Close()
	ch, err = second.Subscribe(context.Background(), "events")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for len(got) < 5 {
		m := bustest.Recv(t, ch, 5*time.Second)
		got[m.UUID] = true
		m.Ack()
	}
	waitPending(t, c, prefix+"events", "millrace", 0)
}

// The subscription outlives a Redis restart that lost every key: it
// recreates its group and goes on with new entries.
func TestSurvivesRedisRestart(t *testing.T) {
	srv := testenv.StartRedis(t)
	c := newClient(t, srv.URL())
	cfg := redisstream.Config{Prefix: "t:", Block: 100 * time.Millisecond, DrainTimeout: time.Second}
	pub := redisstream.NewPublisher(c, cfg)
	sub := redisstream.NewSubscriber(c, cfg, nil)
	defer sub.Close()
	ch, err := sub.Subscribe(context.Background(), "events")
	if err != nil {
		t.Fatal(err)
	}
	before := newMessages(3, nil)
	if err := pub.Publish("events", before...); err != nil {
		t.Fatal(err)
	}
	for range before {
		bustest.Recv(t, ch, 5*time.Second).Ack()
	}
	srv.Stop()
	srv.Start()
	after := message.NewMessage("after-restart", []byte("x"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := pub.Publish("events", after)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish after restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	m := bustest.Recv(t, ch, 15*time.Second)
	if m.UUID != after.UUID {
		t.Fatalf("after restart got %s, want %s", m.UUID, after.UUID)
	}
	m.Ack()
}

func TestPublishCapsStreamLength(t *testing.T) {
	c, prefix := testenv.Redis(t)
	cfg := redisstream.Config{Prefix: prefix, MaxLen: 100}
	if err := redisstream.NewPublisher(c, cfg).Publish("events", newMessages(5000, nil)...); err != nil {
		t.Fatal(err)
	}
	n, err := c.XLen(context.Background(), prefix+"events").Result()
	if err != nil {
		t.Fatal(err)
	}
	// MAXLEN ~ trims whole macro nodes (100 entries by default), so the
	// stream keeps a little more than the cap, never the whole history.
	if n < 100 || n > 1000 {
		t.Errorf("stream length = %d after 5000 appends with max_len 100", n)
	}
}

// Concurrent Publish calls share pipelines: every message is stored once,
// and the messages of one call stay in their order.
func TestConcurrentPublishersSharePipelines(t *testing.T) {
	c, prefix := testenv.Redis(t)
	pc := newClient(t, testenv.RedisURL())
	pipelines := &countPipelines{}
	pc.AddHook(pipelines)
	pub := redisstream.NewPublisher(pc, redisstream.Config{Prefix: prefix})
	const callers, calls, perCall = 50, 20, 3
	var wg sync.WaitGroup
	for g := range callers {
		wg.Go(func() {
			for i := range calls {
				msgs := make([]*message.Message, perCall)
				for j := range msgs {
					msgs[j] = message.NewMessage(fmt.Sprintf("%d-%d-%d", g, i, j), []byte(strconv.Itoa(j)))
				}
				if err := pub.Publish("events", msgs...); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	entries, err := c.XRange(context.Background(), prefix+"events", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != callers*calls*perCall {
		t.Fatalf("%d entries, want %d", len(entries), callers*calls*perCall)
	}
	seen := map[string]bool{}
	next := map[string]int{} // call → next position
	for _, e := range entries {
		id := e.Values["uuid"].(string)
		if seen[id] {
			t.Fatalf("message %s stored twice", id)
		}
		seen[id] = true
		call := id[:strings.LastIndexByte(id, '-')]
		if pos := e.Values["payload"].(string); pos != strconv.Itoa(next[call]) {
			t.Fatalf("call %s: message %s at position %d of the stream order", call, pos, next[call])
		}
		next[call]++
	}
	if n := pipelines.n.Load(); n >= callers*calls {
		t.Errorf("%d pipelines for %d calls: concurrent calls did not share them", n, callers*calls)
	}
	t.Logf("%d calls, %d pipelines", callers*calls, pipelines.n.Load())
}

// countPipelines counts the pipelines a client sends.
type countPipelines struct{ n atomic.Int32 }

func (h *countPipelines) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *countPipelines) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *countPipelines) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// With WaitReplicas, Publish returns once the replica holds the entries
// (Redis WAIT on the XADDs' connection), so a failover to it loses
// nothing acknowledged; with the replica gone it fails, naming
// redis.wait_replicas, and without WaitReplicas it does not wait.
func TestPublishWaitsForReplicas(t *testing.T) {
	ctx := context.Background()
	primary, replica := testenv.StartRedis(t), testenv.StartRedis(t)
	pc, rc := newClient(t, primary.URL()), newClient(t, replica.URL())
	host, port, _ := strings.Cut(primary.Addr(), ":")
	if err := rc.Do(ctx, "replicaof", host, port).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := rc.Info(ctx, "replication").Result()
		if err == nil && strings.Contains(info, "master_link_status:up") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica did not sync within 30s: %v\n%s", err, info)
		}
		time.Sleep(50 * time.Millisecond)
	}

	cfg := redisstream.Config{Prefix: "wait:", WaitReplicas: 1, WaitTimeout: 300 * time.Millisecond}
	for round := range 5 {
		if err := redisstream.NewPublisher(pc, cfg).Publish("events", newMessages(200, nil)...); err != nil {
			t.Fatalf("publish with the replica up: %v", err)
		}
		// Read on the replica right away: WAIT returned, so it has them.
		if n, err := rc.XLen(ctx, "wait:events").Result(); err != nil || n != int64(200*(round+1)) {
			t.Fatalf("round %d: the replica holds %d entries (%v) when Publish returned; want %d", round, n, err, 200*(round+1))
		}
	}

	replica.Stop()
	err := redisstream.NewPublisher(pc, cfg).Publish("events", newMessages(3, nil)...)
	if err == nil || !strings.Contains(err.Error(), "0 of the 1 replicas asked for (redis.wait_replicas)") {
		t.Fatalf("publish with the replica down = %v; want an error naming redis.wait_replicas", err)
	}
	cfg.WaitReplicas = 0
	if err := redisstream.NewPublisher(pc, cfg).Publish("events", newMessages(3, nil)...); err != nil {
		t.Fatalf("publish without WaitReplicas, replica down: %v", err)
	}
}
