package partition

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/bus/lanes"
)

// Share holds the bounds that the partitions of one subscription share,
// so that the subscription has the bounds of one whatever the number of
// partitions it holds.
type Share struct {
	// Slots holds the in-flight slots (lanes.Options.Slots).
	Slots *lanes.Slots
	// Buffered holds the room for messages held in the lanes
	// (lanes.Options.Buffered).
	Buffered chan struct{}
	// ReadAhead is how many messages one partition fetches or reads at
	// a time.
	ReadAhead int
}

// Start starts consuming partition p within the bounds of sh. It returns
// the partition's messages and the function that stops it: stop returns
// after the messages of p released on msgs have settled (or the bus's
// drain timeout passed), and msgs is closed once stop has returned, or
// before. Each message's context ends when the partition stops, at the
// latest; a message not yet taken from the fan-in by then is dropped, as
// its lanes settled it as not acked. On an error nothing runs and the
// partition is tried again later.
type Start func(p int, sh Share) (msgs <-chan *message.Message, stop func(), err error)

// FanInConfig tunes FanIn.
type FanInConfig struct {
	Config
	// MaxInFlight bounds the messages released and not yet settled, over
	// every partition (≥ 1).
	MaxInFlight int
	// MaxBuffered bounds the messages held in the lanes, in flight or
	// queued, over every partition.
	MaxBuffered int
	// ReadAhead is the read-ahead of one subscription; each partition
	// gets its share of it, at least 16.
	ReadAhead int
}

// FanIn consumes the partitions this process leases from l (see Run) into
// one channel: start consumes one partition, within bounds that every
// partition shares. stop ends the leasing, which stops every partition
// (its released messages settle first) and releases the leases; stopped
// is closed after it, and after out. ctx gives its values only: the
// fan-in runs until stop.
func FanIn(ctx context.Context, l Leases, c FanInConfig, start Start) (out <-chan *message.Message, stop func(), stopped <-chan struct{}) {
	ch := make(chan *message.Message)
	sh := Share{
		Slots:     lanes.NewSlots(c.MaxInFlight),
		Buffered:  make(chan struct{}, c.MaxBuffered),
		ReadAhead: max(c.ReadAhead/c.Partitions, 16),
	}
	consume := func(p int) (func(), error) {
		msgs, stopP, err := start(p, sh)
		if err != nil {
			return nil, err
		}
		forwarded := make(chan struct{})
		go func() {
			defer close(forwarded)
			for m := range msgs {
				select {
				case ch <- m:
				case <-m.Context().Done():
					// The partition stopped: its lanes settle m as not
					// acked, and its next owner gets it.
				}
			}
		}()
		// The partition's forwarder ends with it: nothing of p reaches
		// out after its lease is released.
		return func() { stopP(); <-forwarded }, nil
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(rctx, l, c.Config, consume)
		// Run returns after every partition's stop returned: nothing
		// sends on ch any more.
		close(ch)
	}()
	return ch, func() { cancel(); <-done }, done
}
