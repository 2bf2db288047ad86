package redisstream_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/millrace/millrace/bus"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/bus/redisstream"
	"github.com/millrace/millrace/test/testenv"
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

// TestPartitionsKeepOrderAcrossWorkers: two worker processes share a
// partitioned topic; events of one key never run on both at once nor out
// of order, also while one worker stops and the other takes its
// partitions over, and every event is handled.
func TestPartitionsKeepOrderAcrossWorkers(t *testing.T) {
	orderAcrossWorkers(t, 6)
}

// orderAcrossWorkers runs TestPartitionsKeepOrderAcrossWorkers with the
// given number of partitions; with 0 the two workers share one stream,
// and it fails: two workers run events of one key at once.
func orderAcrossWorkers(t *testing.T, partitions int) {
	c, prefix := testenv.Redis(t)
	const keys, per = 12, 40
	cfg := redisstream.Config{
		Prefix: prefix, Group: "workers", MaxInFlight: 4, Batch: 50, Block: 100 * time.Millisecond,
		ClaimIdle: time.Second, DrainTimeout: 5 * time.Second,
		Partitions: partitions, PartitionTTL: time.Second,
	}

	var (
		mu         sync.Mutex
		next       = map[string]int{}
		running    = map[string]string{}
		byWorker   = map[string]int{}
		violations []string
		handled    int
		duplicates int
		allDone    = make(chan struct{})
	)
	violate := func(format string, args ...any) {
		violations = append(violations, fmt.Sprintf(format, args...))
	}
	// Call with mu held.
	summary := func() string {
		return fmt.Sprintf("handled %d of %d events (a=%d b=%d), %d redeliveries of handled events, %d order violations",
			handled, keys*per, byWorker["a"], byWorker["b"], duplicates, len(violations))
	}
	// An event released out of order is acked all the same, so the
	// test cannot end well after one: the later ones of its key are
	// counted as violations too.
	handle := func(name string, m *message.Message) {
		key, seq := m.Metadata.Get(bus.KeyMetadata), 0
		fmt.Sscan(string(m.Payload), &seq)
		mu.Lock()
		if w, busy := running[key]; busy {
			violate("%s: event %d runs on %s while %s runs one", key, seq, name, w)
		}
		switch {
		case seq > next[key]:
			violate("%s: event %d on %s before event %d", key, seq, name, next[key])
		case seq < next[key]:
			duplicates++ // a redelivery of a handled event (the ledger's job)
		default:
			next[key]++
			handled++
			byWorker[name]++
			if handled == keys*per {
				close(allDone)
			}
		}
		running[key] = name
		mu.Unlock()
		time.Sleep(time.Millisecond)
		mu.Lock()
		delete(running, key)
		mu.Unlock()
		m.Ack()
	}
	subscribe := func(name string) (*redisstream.Subscriber, *sync.WaitGroup) {
		wc := cfg
		wc.Consumer = name
		// A client of its own: a process of its own.
		sub := redisstream.NewSubscriber(newClient(t, testenv.RedisURL()), wc, nil)
		ch, err := sub.Subscribe(context.Background(), "events")
		if err != nil {
			t.Fatal(err)
		}
		var handlers sync.WaitGroup
		handlers.Go(func() {
			// One goroutine per message, as the router runs them.
			for m := range ch {
				handlers.Go(func() { handle(name, m) })
			}
		})
		return sub, &handlers
	}
	a, aDone := subscribe("a")
	b, bDone := subscribe("b")
	defer func() { _ = a.Close(); _ = b.Close(); aDone.Wait(); bDone.Wait() }()
	if partitions > 0 {
		waitShared(t, c, prefix+"events:leases:workers:", partitions, "a", "b")
	}

	var msgs []*message.Message
	for i := range per {
		for k := range keys {
			m := message.NewMessage(fmt.Sprintf("%08d-0000-4000-8000-%012d", k, i), []byte(strconv.Itoa(i)))
			m.Metadata.Set(bus.KeyMetadata, "k"+strconv.Itoa(k))
			msgs = append(msgs, m)
		}
	}
	if err := redisstream.NewPublisher(c, cfg).Publish("events", msgs...); err != nil {
		t.Fatal(err)
	}

	// Let both work a while, then stop a: b takes its partitions over.
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		na, nb, sum := byWorker["a"], byWorker["b"], summary()
		first := slices.Clone(violations[:min(5, len(violations))])
		mu.Unlock()
		if na > 20 && nb > 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("partitions=%d: both workers should share the work: %s; the first violations: %v",
				partitions, sum, first)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	aDone.Wait()
	mu.Lock()
	atClose := byWorker["a"]
	mu.Unlock()
	select {
	case <-allDone:
	case <-time.After(30 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("partitions=%d: %s; the first violations: %v", partitions, summary(), violations[:min(5, len(violations))])
	}
	_ = b.Close()
	bDone.Wait()

	mu.Lock()
	defer mu.Unlock()
	if byWorker["a"] != atClose {
		t.Errorf("a handled %d events after it closed", byWorker["a"]-atClose)
	}
	if len(violations) > 0 {
		t.Errorf("%d order violations with %d partitions; the first: %v", len(violations), partitions, violations[:min(5, len(violations))])
	}
	t.Logf("partitions=%d: %s", partitions, summary())
	waitPendingStreams(t, c, cfg, "events", 0)
}

// waitShared waits until every partition's lease is held and each
// member holds one. The lease keys are package partition's RedisLeases
// under the subscriber's prefix, "<stream>:leases:<group>:".
func waitShared(t *testing.T, c *redis.Client, leasePrefix string, partitions int, members ...string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		held := map[string]int{}
		for p := range partitions {
			if m, err := c.Get(context.Background(), leasePrefix+strconv.Itoa(p)).Result(); err == nil {
				held[m]++
			}
		}
		shared := true
		for _, m := range members {
			shared = shared && held[m] > 0
		}
		total := 0
		for _, n := range held {
			total += n
		}
		if shared && total == partitions {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("leases held %v, want every one of %d held, by each of %v", held, partitions, members)
		}
		time.Sleep(20 * time.Millisecond)
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
		m := recv(t, deadCh, 10*time.Second)
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
		m := recv(t, ch, 15*time.Second)
		key := m.Metadata.Get(bus.KeyMetadata)
		seq, _ := strconv.Atoi(string(m.Payload))
		seqs[key] = append(seqs[key], seq)
		// Taken-over entries carry no delivery count; new ones do.
		if delivery := m.Metadata.Get(redisstream.DeliveryMetadata); (seq < before) != (delivery == "") {
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
