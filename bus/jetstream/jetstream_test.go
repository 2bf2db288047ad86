package jetstream_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/bus/jetstream"
	"github.com/millrace/millrace/test/testenv"
)

// busConfig returns a config on a fresh stream of the test's own.
func busConfig(t *testing.T, js njs.JetStream, prefix, group string) jetstream.Config {
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
		return jetstream.NewPublisher(js, cfg), jetstream.NewSubscriber(js, cfg, nil)
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

// TestOrderPerKeyParallelAcrossKeys checks the promise the router relies
// on: one key's messages one after another in publish order, different
// keys at the same time.
func TestOrderPerKeyParallelAcrossKeys(t *testing.T) {
	_, js, prefix := testenv.NATS(t)
	cfg := busConfig(t, js, prefix, "order")
	pub, sub := jetstream.NewPublisher(js, cfg), jetstream.NewSubscriber(js, cfg, nil)
	defer sub.Close()
	const keys, per = 8, 25
	var msgs []*message.Message
	for i := range per {
		for k := range keys {
			m := message.NewMessage(fmt.Sprintf("%08d-0000-4000-8000-%012d", k, i), []byte(fmt.Sprint(i)))
			m.Metadata.Set(bus.KeyMetadata, fmt.Sprint("k", k))
			m.Metadata.Set("custom", "v")
			msgs = append(msgs, m)
		}
	}
	if err := pub.Publish("events", msgs...); err != nil {
		t.Fatal(err)
	}
	ch, err := sub.Subscribe(context.Background(), "events")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	next := map[string]int{}
	running := map[string]bool{}
	maxParallel, parallel := 0, 0
	var wg sync.WaitGroup
	for range keys * per {
		var m *message.Message
		select {
		case m = <-ch:
		case <-time.After(15 * time.Second):
			t.Fatal("timed out waiting for messages")
		}
		if m.Metadata.Get("custom") != "v" {
			t.Errorf("metadata lost: %v", m.Metadata)
		}
		key := m.Metadata.Get(bus.KeyMetadata)
		mu.Lock()
		if running[key] {
			t.Errorf("two messages of %s released at once", key)
		}
		if want := fmt.Sprint(next[key]); string(m.Payload) != want {
			t.Errorf("%s: got %s, want %s", key, m.Payload, want)
		}
		next[key]++
		running[key] = true
		parallel++
		maxParallel = max(maxParallel, parallel)
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			running[key] = false
			parallel--
			mu.Unlock()
			m.Ack()
		}()
	}
	wg.Wait()
	if maxParallel < 2 {
		t.Errorf("at most %d message(s) in flight; different keys must run in parallel", maxParallel)
	}
	t.Logf("proved: %d keys × %d messages in order per key, up to %d in parallel", keys, per, maxParallel)
}

// TestNackWithDelay: a nacked message comes back, not before the delay
// the handler asked for.
func TestNackWithDelay(t *testing.T) {
	_, js, prefix := testenv.NATS(t)
	cfg := busConfig(t, js, prefix, "nack")
	pub, sub := jetstream.NewPublisher(js, cfg), jetstream.NewSubscriber(js, cfg, nil)
	defer sub.Close()
	if err := pub.Publish("events", message.NewMessage("00000000-0000-4000-8000-000000000001", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	ch, err := sub.Subscribe(context.Background(), "events")
	if err != nil {
		t.Fatal(err)
	}
	first := <-ch
	first.Metadata.Set(bus.RetryDelayMetadata, "700ms")
	start := time.Now()
	first.Nack()
	select {
	case again := <-ch:
		if waited := time.Since(start); waited < 600*time.Millisecond {
			t.Errorf("redelivered after %s; want at least 700ms", waited)
		}
		if again.UUID != first.UUID {
			t.Errorf("redelivered %s; want %s", again.UUID, first.UUID)
		}
		again.Ack()
	case <-time.After(10 * time.Second):
		t.Fatal("nacked message not redelivered")
	}
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

// TestNackKeepsOrder: a nacked message runs again before the later
// messages of its key.
func TestNackKeepsOrder(t *testing.T) {
	_, js, prefix := testenv.NATS(t)
	cfg := busConfig(t, js, prefix, "nackorder")
	pub, sub := jetstream.NewPublisher(js, cfg), jetstream.NewSubscriber(js, cfg, nil)
	defer sub.Close()
	for i := range 2 {
		m := message.NewMessage(fmt.Sprintf("00000000-0000-4000-8000-00000000000%d", i), []byte(fmt.Sprint(i)))
		m.Metadata.Set(bus.KeyMetadata, "k")
		if err := pub.Publish("events", m); err != nil {
			t.Fatal(err)
		}
	}
	ch, err := sub.Subscribe(context.Background(), "events")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 3 {
		select {
		case m := <-ch:
			got = append(got, string(m.Payload))
			if len(got) == 1 {
				m.Metadata.Set(bus.RetryDelayMetadata, "300ms")
				m.Nack()
				continue
			}
			m.Ack()
		case <-time.After(10 * time.Second):
			t.Fatalf("timed out; got %v", got)
		}
	}
	if strings.Join(got, ",") != "0,0,1" {
		t.Fatalf("deliveries %v; want 0,0,1 (the nacked message before the next of its key)", got)
	}
}

// TestPartitionsKeepOrderAcrossWorkers: two worker processes share a
// partitioned topic; events of one key never run on both at once nor out
// of order, also while one worker stops and the other takes its
// partitions over, and every event is handled.
func TestPartitionsKeepOrderAcrossWorkers(t *testing.T) {
	_, js, prefix := testenv.NATS(t)
	cfg := busConfig(t, js, prefix, "parts")
	cfg.Partitions, cfg.PartitionTTL = 6, time.Second
	const keys, per = 12, 40
	var msgs []*message.Message
	for i := range per {
		for k := range keys {
			m := message.NewMessage(fmt.Sprintf("%08d-0000-4000-8000-%012d", k, i), []byte(fmt.Sprint(i)))
			m.Metadata.Set(bus.KeyMetadata, fmt.Sprint("k", k))
			msgs = append(msgs, m)
		}
	}
	if err := jetstream.NewPublisher(js, cfg).Publish("events", msgs...); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	next := map[string]int{}
	running := map[string]string{}
	byWorker := map[string]int{}
	handled, duplicates := 0, 0
	allDone := make(chan struct{})
	work := func(name string, ch <-chan *message.Message) {
		for m := range ch {
			key, seq := m.Metadata.Get(bus.KeyMetadata), 0
			fmt.Sscan(string(m.Payload), &seq)
			mu.Lock()
			if w, busy := running[key]; busy {
				t.Errorf("%s: event %d runs on %s while %s runs one", key, seq, name, w)
			}
			switch {
			case seq > next[key]:
				t.Errorf("%s: event %d on %s before event %d", key, seq, name, next[key])
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
	}
	subscribe := func(member string) (*jetstream.Subscriber, chan struct{}) {
		c := cfg
		c.Member = member
		sub := jetstream.NewSubscriber(js, c, nil)
		ch, err := sub.Subscribe(context.Background(), "events")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); work(member, ch) }()
		return sub, done
	}
	a, aDone := subscribe("a")
	b, bDone := subscribe("b")
	defer b.Close()
	// Let both work a while, then stop a: b takes all partitions over.
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		na, nb := byWorker["a"], byWorker["b"]
		mu.Unlock()
		if na > 20 && nb > 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("both workers should share the work: a=%d b=%d", na, nb)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	<-aDone
	select {
	case <-allDone:
	case <-time.After(30 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("handled %d of %d events", handled, keys*per)
	}
	b.Close()
	<-bDone
	mu.Lock()
	defer mu.Unlock()
	t.Logf("handled %d events in order per key: a=%d b=%d, %d redeliveries of handled events", handled, byWorker["a"], byWorker["b"], duplicates)
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
