package bustest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/bus"
)

// Topic is the topic every subtest publishes to and subscribes to.
const Topic = "events"

// Factory opens a bus for one subtest. Each call gets the subtest's t, so
// that a bus can put what it creates under the subtest's own stream or
// key prefix and clean it up with t.Cleanup.
type Factory struct {
	// New returns a publisher and a subscriber on a fresh stream without
	// partitions. The suite closes the subscriber.
	New func(t *testing.T) (message.Publisher, message.Subscriber)
	// Partitioned returns a publisher on a fresh stream with partitions
	// and a function returning the subscriber of another worker process
	// (member names it, unique among the workers) on that same stream
	// and consumer group. The suite closes the subscribers. Nil (a bus
	// without partitions) leaves PartitionsAcrossWorkers out.
	Partitioned func(t *testing.T) (pub message.Publisher, worker func(member string) message.Subscriber)
}

// Run runs the suite's subtests on the bus f opens.
func Run(t *testing.T, f Factory) {
	t.Helper()
	if f.New == nil {
		t.Fatal("bustest: Factory.New is nil")
	}
	t.Run("OrderPerKey", func(t *testing.T) { testOrderPerKey(t, f) })
	t.Run("NackWithDelay", func(t *testing.T) { testNackWithDelay(t, f) })
	// A bus without partitions has nothing to show here: the subtest is
	// not run rather than reported as skipped.
	if f.Partitioned != nil {
		t.Run("PartitionsAcrossWorkers", func(t *testing.T) { testPartitionsAcrossWorkers(t, f) })
	}
}

// Timeouts: generous, for two shared cores under -race.
const (
	deliveryTimeout = 15 * time.Second
	allTimeout      = 60 * time.Second
)

// keyed returns rounds from to to (exclusive) of one message for each of
// keys keys: round i holds message i of every key, its payload "i".
func keyed(keys, from, to int) []*message.Message {
	var msgs []*message.Message
	for i := from; i < to; i++ {
		for k := range keys {
			m := message.NewMessage(watermill.NewUUID(), []byte(strconv.Itoa(i)))
			m.Metadata.Set(bus.KeyMetadata, "k"+strconv.Itoa(k))
			m.Metadata.Set("bustest", "v")
			msgs = append(msgs, m)
		}
	}
	return msgs
}

func subscribe(t *testing.T, sub message.Subscriber) <-chan *message.Message {
	t.Helper()
	ch, err := sub.Subscribe(context.Background(), Topic)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	return ch
}

// Recv returns the next message of ch, or fails the test after timeout;
// buses' own tests use it too.
func Recv(t *testing.T, ch <-chan *message.Message, timeout time.Duration) *message.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("subscription channel closed")
		}
		return m
	case <-time.After(timeout):
		t.Fatalf("no message within %s", timeout)
	}
	return nil
}

// testOrderPerKey: one key's messages one after another in publish
// order, also when some are nacked and redelivered; different keys at
// the same time.
func testOrderPerKey(t *testing.T, f Factory) {
	const keys, per = 8, 25
	pub, sub := f.New(t)
	defer func() { _ = sub.Close() }()
	if err := pub.Publish(Topic, keyed(keys, 0, per)...); err != nil {
		t.Fatal(err)
	}
	ch := subscribe(t, sub)

	var (
		mu                    sync.Mutex
		next                  = map[string]int{}
		running               = map[string]bool{}
		parallel, maxParallel int
		nacks, acked          int
		handlers              sync.WaitGroup
	)
	allAcked := make(chan struct{})
	go func() {
		// One goroutine per message, as the router runs them.
		for m := range ch {
			handlers.Go(func() {
				key := m.Metadata.Get(bus.KeyMetadata)
				seq, _ := strconv.Atoi(string(m.Payload))
				mu.Lock()
				if m.Metadata.Get("bustest") != "v" {
					t.Errorf("%s: metadata lost: %v", key, m.Metadata)
				}
				if running[key] {
					t.Errorf("%s: two messages released at once", key)
				}
				if seq != next[key] {
					t.Errorf("%s: got message %d, want %d", key, seq, next[key])
				}
				running[key] = true
				parallel++
				maxParallel = max(maxParallel, parallel)
				mu.Unlock()
				time.Sleep(time.Duration(1000+rand.IntN(2000)) * time.Microsecond)
				mu.Lock()
				running[key] = false
				parallel--
				nack := rand.IntN(10) == 0
				if nack {
					nacks++
				} else {
					next[key] = seq + 1
					acked++
					if acked == keys*per {
						close(allAcked)
					}
				}
				mu.Unlock()
				if nack {
					m.Metadata.Set(bus.RetryDelayMetadata, "2ms")
					m.Nack()
					return
				}
				m.Ack()
			})
		}
	}()
	select {
	case <-allAcked:
	case <-time.After(allTimeout):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("%d of %d messages acked within %s; next per key %v", acked, keys*per, allTimeout, next)
	}
	_ = sub.Close()
	handlers.Wait()
	mu.Lock()
	defer mu.Unlock()
	if maxParallel < 2 {
		t.Errorf("at most %d message(s) in flight; different keys must run in parallel", maxParallel)
	}
	if nacks == 0 {
		t.Errorf("no message was nacked; the test did not exercise redelivery")
	}
	for k := range keys {
		if got := next["k"+strconv.Itoa(k)]; got != per {
			t.Errorf("k%d: %d messages handled, want %d", k, got, per)
		}
	}
	t.Logf("%d keys × %d messages in order per key, up to %d in parallel, %d nacks", keys, per, maxParallel, nacks)
}

// testNackWithDelay: a nacked message comes back, not before the delay
// the handler asked for, and before the next message of its key.
func testNackWithDelay(t *testing.T, f Factory) {
	const delay = 300 * time.Millisecond
	pub, sub := f.New(t)
	defer func() { _ = sub.Close() }()
	msgs := keyed(1, 0, 2)
	if err := pub.Publish(Topic, msgs...); err != nil {
		t.Fatal(err)
	}
	ch := subscribe(t, sub)
	first := Recv(t, ch, deliveryTimeout)
	if first.UUID != msgs[0].UUID {
		t.Fatalf("first delivery %s (%s), want %s (0)", first.UUID, first.Payload, msgs[0].UUID)
	}
	first.Metadata.Set(bus.RetryDelayMetadata, delay.String())
	nackedAt := time.Now()
	first.Nack()
	again := Recv(t, ch, deliveryTimeout)
	waited := time.Since(nackedAt)
	if again.UUID != msgs[0].UUID {
		t.Fatalf("after the nack got %s (%s), want %s (0) again, before the next of its key", again.UUID, again.Payload, msgs[0].UUID)
	}
	// A little slack for timer granularity.
	if waited < delay-20*time.Millisecond {
		t.Errorf("redelivered after %s, want at least %s", waited, delay)
	}
	again.Ack()
	second := Recv(t, ch, deliveryTimeout)
	if second.UUID != msgs[1].UUID {
		t.Fatalf("then got %s (%s), want %s (1)", second.UUID, second.Payload, msgs[1].UUID)
	}
	second.Ack()
	t.Logf("redelivered after %s", waited)
}

// testPartitionsAcrossWorkers: two worker processes share a partitioned
// topic; messages of one key never run on both at once nor out of
// order, also while one worker stops and the other takes its
// partitions over, and every message is handled.
func testPartitionsAcrossWorkers(t *testing.T, f Factory) {
	const keys, per, paced = 12, 60, 40
	pub, worker := f.Partitioned(t)

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
	// Call with mu held.
	summary := func() string {
		s := fmt.Sprintf("handled %d of %d (a=%d b=%d), %d redeliveries of handled messages, %d order violations",
			handled, keys*per, byWorker["a"], byWorker["b"], duplicates, len(violations))
		if len(violations) > 0 {
			s += fmt.Sprintf(", the first: %q", violations[:min(5, len(violations))])
		}
		return s
	}
	// A message released out of order is acked all the same, so the
	// later ones of its key are counted as violations too.
	handle := func(name string, m *message.Message) {
		key := m.Metadata.Get(bus.KeyMetadata)
		seq, _ := strconv.Atoi(string(m.Payload))
		mu.Lock()
		if w, busy := running[key]; busy {
			violations = append(violations, fmt.Sprintf("%s: message %d runs on %s while %s runs one", key, seq, name, w))
		}
		switch {
		case seq > next[key]:
			violations = append(violations, fmt.Sprintf("%s: message %d on %s before message %d", key, seq, name, next[key]))
		case seq < next[key]:
			duplicates++ // a redelivery of a handled message (the ledger's job)
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
	start := func(name string) (message.Subscriber, *sync.WaitGroup) {
		sub := worker(name)
		ch := subscribe(t, sub)
		var handlers sync.WaitGroup
		handlers.Go(func() {
			for m := range ch {
				handlers.Go(func() { handle(name, m) })
			}
		})
		return sub, &handlers
	}
	a, aDone := start("a")
	b, bDone := start("b")
	defer func() { _ = a.Close(); _ = b.Close(); aDone.Wait(); bDone.Wait() }()

	// Publish round by round while the workers settle on their shares,
	// until both handle messages.
	shared := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return byWorker["a"] >= 5 && byWorker["b"] >= 5
	}
	deadline := time.Now().Add(allTimeout)
	round := 0
	for round < paced && (round < 10 || !shared()) {
		if err := pub.Publish(Topic, keyed(keys, round, round+1)...); err != nil {
			t.Fatal(err)
		}
		round++
		time.Sleep(25 * time.Millisecond)
	}
	for !shared() {
		if time.Now().After(deadline) {
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("both workers should share the keys: %s", summary())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The rest at once, and a stops while they flow: b takes its
	// partitions over.
	if err := pub.Publish(Topic, keyed(keys, round, per)...); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("closing worker a: %v", err)
	}
	aDone.Wait()
	mu.Lock()
	atClose := byWorker["a"]
	mu.Unlock()
	select {
	case <-allDone:
	case <-time.After(allTimeout):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("not every message handled within %s after a stopped: %s", allTimeout, summary())
	}
	_ = b.Close()
	bDone.Wait()

	mu.Lock()
	defer mu.Unlock()
	if byWorker["a"] != atClose {
		t.Errorf("a handled %d messages after it closed", byWorker["a"]-atClose)
	}
	if len(violations) > 0 {
		t.Errorf("%s", summary())
	}
	t.Logf("%s", summary())
}
