package jetstream_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/bus/jetstream"
	"github.com/millrace/millrace/internal/testenv"
)

// BenchmarkPublish publishes one message per call, from parallel
// callers, as the capture handlers do, to a memory stream.
func BenchmarkPublish(b *testing.B) {
	_, js, prefix := testenv.NATS(b)
	cfg := busConfig(b, js, prefix, "bench")
	p := jetstream.NewPublisher(js, cfg)
	defer p.Close()
	payload := make([]byte, 500)
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m := message.NewMessage(watermill.NewUUID(), payload)
			if err := p.Publish("events", m); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
