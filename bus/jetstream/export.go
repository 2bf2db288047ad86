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
// limit of them (0: no limit).
func Export(ctx context.Context, js jetstream.JetStream, c Config, topic string, from uint64, since time.Time, limit int,
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
	for pending > 0 && (limit <= 0 || n < limit) {
		batch, err := cons.Fetch(int(min(pending, 500)), jetstream.FetchMaxWait(5*time.Second))
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
			pending--
			if n++; (limit > 0 && n >= limit) || pending == 0 {
				break
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoHeartbeat) {
			return fmt.Errorf("jetstream: export %s: %w", c.Stream, err)
		}
		if got == 0 {
			// The stream lost the rest to its limits meanwhile.
			return nil
		}
	}
	return nil
}
