package jetstream_test

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	njs "github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/bus/jetstream"
	"github.com/millrace/millrace/internal/testenv"
)

// TestPartitionedDrainHasNoStall drains a pre-filled stream of 12
// partitions, 50 times, and fails when two deliveries are more than
// 500 ms apart: every held partition must keep a pull outstanding while
// it has messages and room, or the drain freezes until its pull expires.
func TestPartitionedDrainHasNoStall(t *testing.T) {
	_, js, prefix := testenv.NATS(t)
	const (
		runs       = 50
		events     = 3000
		partitions = 12
		maxGap     = 500 * time.Millisecond
	)
	var worst time.Duration
	for run := range runs {
		gap := drainPartitioned(t, js, fmt.Sprintf("%sr%d", prefix, run), partitions, events)
		worst = max(worst, gap)
		if gap > maxGap {
			t.Errorf("run %d: %v between two deliveries; want at most %v", run, gap, maxGap)
		}
	}
	t.Logf("largest gap between deliveries over %d runs: %v", runs, worst)
}

// drainPartitioned fills a stream of its own with n keyed messages over
// partitions, drains it with one subscriber whose handler acks at once,
// and returns the largest gap between two deliveries.
func drainPartitioned(t *testing.T, js njs.JetStream, name string, partitions, n int) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := jetstream.Config{
		Stream: name, SubjectPrefix: name, Consumer: "drain",
		AckWait: 30 * time.Second, MaxDeliver: -1, MaxAge: time.Hour, Replicas: 1,
		DuplicateWindow: time.Minute, MaxInFlight: 64, DrainTimeout: time.Second, Memory: true,
		Partitions: partitions, PartitionTTL: 10 * time.Second, Member: "solo",
	}
	if _, err := jetstream.EnsureStream(ctx, js, cfg); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = js.DeleteStream(context.Background(), name) }()
	pub := jetstream.NewPublisher(js, cfg)
	const batch = 500
	for from := 0; from < n; from += batch {
		msgs := make([]*message.Message, 0, batch)
		for i := from; i < min(from+batch, n); i++ {
			m := message.NewMessage(fmt.Sprintf("00000000-0000-4000-8000-%012d", i), []byte("{}"))
			m.Metadata.Set(bus.KeyMetadata, "k"+strconv.Itoa(i%400))
			msgs = append(msgs, m)
		}
		if err := pub.Publish("events", msgs...); err != nil {
			t.Fatal(err)
		}
	}

	sub := jetstream.NewSubscriber(js, cfg, nil, nil)
	defer func() { _ = sub.Close() }()
	ch, err := sub.Subscribe(ctx, "events")
	if err != nil {
		t.Fatal(err)
	}
	// Partitions start one after another (a lease, then a consumer
	// created): the drain is measured once every one has its consumer,
	// so that a gap is a stall of pulling, not start-up. Meanwhile the
	// subscriber fills its buffers.
	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	for consumers := 0; consumers < partitions; {
		consumers = 0
		for range st.ConsumerNames(ctx).Name() {
			consumers++
		}
		if ctx.Err() != nil {
			t.Fatalf("%d of %d partitions started: %v", consumers, partitions, ctx.Err())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// As Watermill's router does: each message handled on a goroutine
	// of its own, the channel read on.
	var (
		last time.Time
		gap  time.Duration
	)
	for got := 0; got < n; got++ {
		select {
		case m := <-ch:
			now := time.Now()
			if !last.IsZero() {
				gap = max(gap, now.Sub(last))
			}
			last = now
			go m.Ack()
		case <-ctx.Done():
			t.Fatalf("%d of %d messages delivered: %v", got, n, ctx.Err())
		}
	}
	return gap
}

// TestIdleConsumerIsReported: a consumer that receives nothing while the
// server holds messages for it (here: its durable consumer deleted under
// it) shows in millrace_bus_idle_partitions with a warning, and leaves
// the gauge once messages flow again (the consumer recreated).
func TestIdleConsumerIsReported(t *testing.T) {
	_, js, prefix := testenv.NATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := busConfig(t, js, prefix, "idle")
	pub := jetstream.NewPublisher(js, cfg)
	const n = 300
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(fmt.Sprintf("00000000-0000-4000-8000-%012d", i), []byte("{}"))
		msgs[i].Metadata.Set(bus.KeyMetadata, "k"+strconv.Itoa(i))
	}
	if err := pub.Publish("events", msgs...); err != nil {
		t.Fatal(err)
	}
	var logs testenv.LogBuffer
	m := jetstream.NewMetrics()
	sub := jetstream.NewSubscriber(js, cfg, m, slog.New(slog.NewTextHandler(&logs, nil)))
	defer func() { _ = sub.Close() }()
	ch, err := sub.Subscribe(ctx, "events")
	if err != nil {
		t.Fatal(err)
	}
	first := <-ch
	first.Ack()
	consumer := sub.ConsumerName("events")
	info, err := js.Consumer(ctx, cfg.Stream, consumer)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteConsumer(ctx, cfg.Stream, consumer); err != nil {
		t.Fatal(err)
	}
	// What was fetched before the deletion still comes; then nothing.
	acked := 0
	for idle := false; !idle; {
		select {
		case m := <-ch:
			m.Ack()
			acked++
		case <-time.After(100 * time.Millisecond):
			idle = strings.Contains(logs.String(), "consumer idle with messages pending")
		case <-ctx.Done():
			t.Fatalf("no idle warning; logs:\n%s", logs.String())
		}
	}
	if acked >= n-1 {
		t.Fatalf("all %d messages arrived: the consumer was never idle", acked+1)
	}
	if v := testutil.ToFloat64(m.IdlePartitions); v != 1 {
		t.Errorf("millrace_bus_idle_partitions = %v while idle; want 1", v)
	}
	if _, err := js.CreateConsumer(ctx, cfg.Stream, info.CachedInfo().Config); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-ch:
		m.Ack()
	case <-ctx.Done():
		t.Fatal("no message after the consumer was recreated")
	}
	if v := testutil.ToFloat64(m.IdlePartitions); v != 0 {
		t.Errorf("millrace_bus_idle_partitions = %v once messages flow; want 0", v)
	}
}
