package jetstream

import (
	"context"
	"errors"
	"fmt"
	"time"

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
	n := 0
	for limit <= 0 || n < limit {
		// What the stream held is read; then new messages until until.
		tapping := pending == 0
		size, wait := int(min(pending, 500)), 5*time.Second
		if tapping {
			if wait = min(time.Until(until), time.Second); wait <= 0 {
				return nil
			}
			size, wait = 500, max(wait, 100*time.Millisecond)
		}
		batch, err := cons.Fetch(size, jetstream.FetchMaxWait(wait))
		if err != nil {
			return fmt.Errorf("jetstream: export %s: %w", c.Stream, err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("jetstream: export %s: %w", c.Stream, err)
			}
			if err := fn(md.Sequence.Stream, m.Data()); err != nil {
				return err
			}
			pending = max(pending, 1) - 1
			if n++; (limit > 0 && n >= limit) || (pending == 0 && !tapping) {
				break
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoHeartbeat) {
			return fmt.Errorf("jetstream: export %s: %w", c.Stream, err)
		}
		if got == 0 && !tapping {
			// The stream lost the rest to its limits meanwhile.
			pending = 0
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}
