package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Export reads the messages of topic in the stream with an ordered
// consumer: ephemeral, without acks, so the durable consumers and their
// pending messages are not touched. It starts after stream sequence
// from (when above 0), else at since (when not zero), else at the first
// message; it calls fn with each message's stream sequence and payload
// until it reaches the messages that were last when it started, or
// limit of them (0: no limit). With until after now it then keeps
// going, taps the messages that arrive, until that time.
func Export(ctx context.Context, js jetstream.JetStream, c Config, topic string, from uint64, since, until time.Time, limit int,
	fn func(seq uint64, payload []byte) error) error {
	cc := jetstream.OrderedConsumerConfig{FilterSubjects: []string{c.Subject(topic, ">")}, DeliverPolicy: jetstream.DeliverAllPolicy}
	switch {
	case from > 0:
		cc.DeliverPolicy, cc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from+1
	case !since.IsZero():
		cc.DeliverPolicy, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	cons, err := js.OrderedConsumer(ctx, c.Stream, cc)
	if err != nil {
		return fmt.Errorf("jetstream: export %s: %w", c.Stream, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("jetstream: export %s: %w", c.Stream, err)
	}
	pending := info.NumPending
	// One pull iterator for the held messages and the tap, each wait
	// bounded here: a Fetch per round was seen to outlast its own wait
	// by two seconds when messages arrived as it expired (a 1 s round
	// ended 3 s after it began), long enough to end a tap with the
	// messages that arrived during it still on the stream.
	it, err := cons.Messages(jetstream.PullMaxMessages(500))
	if err != nil {
		return fmt.Errorf("jetstream: export %s: %w", c.Stream, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	n := 0
	for limit <= 0 || n < limit {
		// What the stream held is read; then new messages until until.
		wait := 5 * time.Second
		if pending == 0 {
			if wait = time.Until(until); wait <= 0 {
				return nil
			}
		}
		m, err := it.Next(jetstream.NextMaxWait(wait))
		if err := ctx.Err(); err != nil {
			return err
		}
		if errors.Is(err, nats.ErrTimeout) {
			// Held: the stream lost the rest to its limits meanwhile.
			// Tapping: until has come.
			pending = 0
			continue
		}
		if err != nil {
			return fmt.Errorf("jetstream: export %s: %w", c.Stream, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("jetstream: export %s: %w", c.Stream, err)
		}
		if err := fn(md.Sequence.Stream, m.Data()); err != nil {
			return err
		}
		pending = max(pending, 1) - 1
		n++
	}
	return nil
}
