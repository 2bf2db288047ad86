package redisstream_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/bus"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/bus/redisstream"
	"github.com/millrace/millrace/internal/testenv"
)

// benchEntries is the size of the stream each run drains.
const benchEntries = 50_000

// BenchmarkSubscriber drains a stream of 50,000 entries (about 500-byte
// payloads over 1,000 ordering keys) through the subscriber and reports
// entries consumed and acked (XACK done) per second. "direct" acks each
// message as it arrives; "router" runs a Watermill router with a no-op
// handler, as millrace does.
func BenchmarkSubscriber(b *testing.B) {
	for _, mode := range []string{"direct", "router"} {
		b.Run(mode, func(b *testing.B) {
			c, prefix := testenv.Redis(b)
			cfg := redisstream.Config{Prefix: prefix, MaxInFlight: 64, DrainTimeout: 5 * time.Second}
			pub := redisstream.NewPublisher(c, cfg)
			payload := []byte(`{"data":"` + strings.Repeat("x", 480) + `"}`)
			var total time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				topic := fmt.Sprintf("bench%d", i)
				msgs := make([]*message.Message, benchEntries)
				for j := range msgs {
					msgs[j] = message.NewMessage(fmt.Sprintf("%08d-0000-4000-8000-000000000000", j), payload)
					msgs[j].Metadata.Set(bus.KeyMetadata, "k"+strconv.Itoa(j%1000))
				}
				if err := pub.Publish(topic, msgs...); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				start := time.Now()
				sub := redisstream.NewSubscriber(c, cfg, nil)
				if mode == "direct" {
					drainDirect(b, sub, topic)
				} else {
					drainRouter(b, sub, topic)
				}
				waitAcked(b, c, prefix+topic, "millrace")
				total += time.Since(start)
				b.StopTimer()
				if err := sub.Close(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(benchEntries*b.N)/total.Seconds(), "events/s")
		})
	}
}

func drainDirect(b *testing.B, sub *redisstream.Subscriber, topic string) {
	ch, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		b.Fatal(err)
	}
	for range benchEntries {
		select {
		case m := <-ch:
			m.Ack()
		case <-time.After(30 * time.Second):
			b.Fatal("the subscriber stalled")
		}
	}
}

func drainRouter(b *testing.B, sub *redisstream.Subscriber, topic string) {
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, nil)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{}, benchEntries)
	r.AddConsumerHandler("noop", topic, sub, func(*message.Message) error {
		done <- struct{}{}
		return nil
	})
	go func() { _ = r.Run(context.Background()) }()
	defer func() { _ = r.Close() }()
	for range benchEntries {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			b.Fatal("the router stalled")
		}
	}
}

// waitAcked waits until no entry of the stream is pending in the group:
// every one was acked in Redis, not only by the router.
func waitAcked(b *testing.B, c *redis.Client, stream, group string) {
	for deadline := time.Now().Add(30 * time.Second); ; {
		p, err := c.XPending(context.Background(), stream, group).Result()
		if err != nil {
			b.Fatal(err)
		}
		if p.Count == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d entries still pending", p.Count)
		}
		time.Sleep(time.Millisecond)
	}
}
