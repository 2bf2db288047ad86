package lanes

import (
	"context"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/bus"
)

// Forward hands a copy of p, a message the lanes released, to out (the
// channel a Watermill consumer reads) and settles p as the consumer
// settles the copy. The copy carries p's metadata with
// bus.DeliveryMetadata one higher, set on p too so that a redelivery
// counts on; the delay a nack asked for (bus.RetryDelayMetadata) is
// carried back to p for Options.Redeliver. p is nacked when draining is
// closed or ctx ends before the consumer takes or settles the copy.
func Forward(ctx context.Context, out chan<- *message.Message, draining <-chan struct{}, p *message.Message) {
	attempt := 1
	if n := p.Metadata.Get(bus.DeliveryMetadata); n != "" {
		if prev, err := strconv.Atoi(n); err == nil {
			attempt = prev + 1
		}
	}
	c := message.NewMessageWithContext(ctx, p.UUID, p.Payload)
	c.Metadata = make(message.Metadata, len(p.Metadata)+1)
	for k, v := range p.Metadata {
		c.Metadata[k] = v
	}
	c.Metadata.Set(bus.DeliveryMetadata, strconv.Itoa(attempt))
	p.Metadata.Set(bus.DeliveryMetadata, strconv.Itoa(attempt))
	select {
	case out <- c:
	case <-draining:
		p.Nack()
		return
	case <-ctx.Done():
		p.Nack()
		return
	}
	select {
	case <-c.Acked():
		p.Ack()
	case <-c.Nacked():
		if d := c.Metadata.Get(bus.RetryDelayMetadata); d != "" {
			p.Metadata.Set(bus.RetryDelayMetadata, d)
		}
		p.Nack()
	case <-ctx.Done():
		p.Nack()
	}
}

// RetryDelay is how long a nacked message waits before it is released
// again: the delay its handler asked for (bus.RetryDelayMetadata), or
// def. It is what an Options.Redeliver of a bus usually returns.
func RetryDelay(p *message.Message, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(p.Metadata.Get(bus.RetryDelayMetadata)); err == nil && d > 0 {
		return d
	}
	return def
}
