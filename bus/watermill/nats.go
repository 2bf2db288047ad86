package watermill

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"

	"github.com/millrace/millrace/bus/jetstream"
)

// NackDelay is how long a nacked message waits before it is delivered
// again. The upstream subscribers take one fixed delay; one second is
// the shortest the router asks for (middleware.InFlightRetryDelay), so
// a message the router sends back is not handed out again in a loop.
const NackDelay = time.Second

// NewNATS returns watermill-nats/v2's JetStream publisher, on nc, and
// subscriber, on subConn, for the stream of c, which the caller ensures
// (jetstream.EnsureStream): the same subjects, message ids and headers
// as bus/jetstream (jetstream.WireFormat). The subscriber reads a
// durable push consumer, c.Consumer+"_"+topic, with a deliver group of
// the same name, through c.MaxInFlight subscriptions (each handles one
// message at a time), at most c.MaxBuffered unacked (the consumer's
// MaxAckPending). c.Partitions must be 0. The publisher's Close leaves
// nc open, as the topology shares it; subConn belongs to the
// subscriber, whose Close drains it, as upstream does.
func NewNATS(nc, subConn *nats.Conn, c jetstream.Config, logger *slog.Logger) (message.Publisher, message.Subscriber, error) {
	if c.Partitions != 0 {
		return nil, nil, fmt.Errorf("watermill-nats: partitions are not supported (got %d)", c.Partitions)
	}
	wl := watermill.NewSlogLogger(logger)
	wire := jetstream.WireFormat{Config: c}
	pub, err := wmnats.NewPublisherWithNatsConn(nc, wmnats.PublisherPublishConfig{
		Marshaler:         wire,
		SubjectCalculator: subjects(c),
		// The stream is millrace's (EnsureStream); Nats-Msg-Id is set by
		// the wire format, with the topic, so TrackMsgId stays off.
		JetStream: wmnats.JetStreamConfig{},
	}, wl)
	if err != nil {
		return nil, nil, fmt.Errorf("watermill-nats: publisher: %w", err)
	}
	js, err := subConn.JetStream()
	if err != nil {
		return nil, nil, fmt.Errorf("watermill-nats: jetstream: %w", err)
	}
	s := &natsSubscriber{js: js, c: c, build: func(durable string) (*wmnats.Subscriber, error) {
		return wmnats.NewSubscriberWithNatsConn(subConn, wmnats.SubscriberSubscriptionConfig{
			Unmarshaler:       wire,
			SubscribersCount:  max(c.MaxInFlight, 1),
			AckWaitTimeout:    c.AckWait,
			CloseTimeout:      c.DrainTimeout,
			SubjectCalculator: subjects(c),
			NakDelay:          wmnats.NewStaticDelay(NackDelay),
			QueueGroupPrefix:  c.Consumer,
			JetStream: wmnats.JetStreamConfig{
				SubscribeOptions: []nats.SubOpt{
					// Bound, not created by the subscription: nats.go
					// deletes a consumer it created when the
					// subscription ends, and the next start would read
					// the stream again from its first event.
					nats.Bind(c.Stream, durable),
					// The subscriber acks or naks once the router
					// settled the message; nats.go must not ack when
					// the callback returns.
					nats.ManualAck(),
				},
				DurableCalculator: func(string, string) string { return durable },
				// An ack that is lost is a redelivery, which the dedup
				// ledger recognises; waiting for the server's
				// confirmation of each would cost a round trip per
				// message.
				AckAsync: true,
			},
		}, wl)
	}}
	return keepConn{pub}, s, nil
}

// natsSubscriber ensures a topic's durable push consumer, then reads it
// through an upstream subscriber bound to it.
type natsSubscriber struct {
	js    nats.JetStreamContext
	c     jetstream.Config
	build func(durable string) (*wmnats.Subscriber, error)

	mu   sync.Mutex
	subs []*wmnats.Subscriber
}

func (s *natsSubscriber) String() string { return "watermill-nats.Subscriber" }

func (s *natsSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	durable := s.c.Consumer + "_" + topic
	if err := s.ensureConsumer(durable, topic); err != nil {
		return nil, err
	}
	sub, err := s.build(durable)
	if err != nil {
		return nil, fmt.Errorf("watermill-nats: subscriber: %w", err)
	}
	s.mu.Lock()
	s.subs = append(s.subs, sub)
	s.mu.Unlock()
	return sub.Subscribe(ctx, topic)
}

// ensureConsumer creates the durable push consumer of topic, or updates
// it to c's settings. A pull consumer of that name (millrace's driver)
// is an error that says so: the two drivers cannot share it.
func (s *natsSubscriber) ensureConsumer(durable, topic string) error {
	maxPending := s.c.MaxBuffered
	if maxPending <= 0 {
		maxPending = 16 * max(s.c.MaxInFlight, 1)
	}
	cc := &nats.ConsumerConfig{
		Durable: durable, DeliverGroup: durable,
		// Outside the stream's "<prefix>.>", and the same at every
		// start, so that an update keeps it.
		DeliverSubject: s.c.SubjectPrefix + "_deliver." + durable,
		DeliverPolicy:  nats.DeliverAllPolicy,
		AckPolicy:      nats.AckExplicitPolicy,
		AckWait:        s.c.AckWait,
		MaxDeliver:     s.c.MaxDeliver,
		MaxAckPending:  maxPending,
		FilterSubject:  s.c.SubjectPrefix + "." + topic + ".>",
	}
	info, err := s.js.ConsumerInfo(s.c.Stream, durable)
	switch {
	case errors.Is(err, nats.ErrConsumerNotFound):
		_, err = s.js.AddConsumer(s.c.Stream, cc)
	case err != nil:
	case info.Config.DeliverSubject == "":
		return fmt.Errorf("watermill-nats: consumer %s of stream %s is a pull consumer (bus.driver \"millrace\"'s): remove it or set another nats.consumer (docs/drivers.md)",
			durable, s.c.Stream)
	default:
		_, err = s.js.UpdateConsumer(s.c.Stream, cc)
	}
	if err != nil {
		return fmt.Errorf("watermill-nats: consumer %s of stream %s: %w", durable, s.c.Stream, err)
	}
	return nil
}

// Close closes the upstream subscribers; each drains the connection.
func (s *natsSubscriber) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, sub := range s.subs {
		errs = append(errs, sub.Close())
	}
	s.subs = nil
	return errors.Join(errs...)
}

// subjects maps a topic to the subjects bus/jetstream uses: the
// subscription takes "<prefix>.<topic>.>", in the deliver group named
// by the consumer.
func subjects(c jetstream.Config) wmnats.SubjectCalculator {
	return func(group, topic string) *wmnats.SubjectDetail {
		return &wmnats.SubjectDetail{Primary: c.SubjectPrefix + "." + topic + ".>", QueueGroup: group + "_" + topic}
	}
}

// keepConn is the upstream publisher without its Close, which closes
// the connection that the topology shares with its dead-letter store.
type keepConn struct{ message.Publisher }

func (keepConn) Close() error { return nil }
