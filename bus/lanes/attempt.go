package lanes

import (
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/bus"
)

// Attempt counts a release of p in its bus.DeliveryMetadata: 1 the
// first time, one higher on each copy released again after a nack (the
// copy carries the metadata on). It is what the Prepare of a bus that
// has no delivery count of its own (a capture) calls.
func Attempt(p *message.Message) {
	attempt := 1
	if n := p.Metadata.Get(bus.DeliveryMetadata); n != "" {
		if prev, err := strconv.Atoi(n); err == nil {
			attempt = prev + 1
		}
	}
	p.Metadata.Set(bus.DeliveryMetadata, strconv.Itoa(attempt))
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
