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
	// Out is the fan-in's channel: each partition's lanes release into
	// it (lanes.Options.Out), with no goroutine between them.
	Out chan<- *message.Message
}

// Start starts consuming partition p within the bounds of sh, releasing
// its messages on sh.Out. It returns the function that stops it: stop
// returns after the messages of p released have settled (or the bus's
// drain timeout passed), and nothing of p is sent on sh.Out after it.
// Each message's context ends when the partition stops, at the latest;
// a message not yet taken from sh.Out by then is not sent, as its lanes
// settle it as not acked. On an error nothing runs and the partition is
// tried again later.
type Start func(p int, sh Share) (stop func(), err error)

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
	// gets its share of it, at least minReadAhead.
	ReadAhead int
}

// minReadAhead is the least a partition reads ahead. A bus asks for
// more when half of it arrived: with twelve partitions sharing the 256
// of one subscription, a pull request went out per ten messages, and
// the pulls cost a partitioned worker 7 % more CPU per event than
// this floor does (docs/performance.md, partition cost).
const minReadAhead = 64

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
		ReadAhead: max(c.ReadAhead/c.Partitions, minReadAhead),
		Out:       ch,
	}
	// A partition's stop returns before its lease is released, and
	// nothing of it reaches out after that.
	consume := func(p int) (func(), error) { return start(p, sh) }
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
