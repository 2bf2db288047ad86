package watermill

import (
	"fmt"
	"log/slog"
	"strings"
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
// as bus/jetstream (jetstream.WireFormat). The subscriber is a push
// consumer, durable as c.Consumer+"_"+topic with a deliver group of the
// same name, consumed by c.MaxInFlight subscriptions (each handles one
// message at a time), at most c.MaxBuffered unacked (the consumer's
// MaxAckPending). c.Partitions must be 0. The publisher's Close leaves
// nc open, as the topology shares it; subConn belongs to the
// subscriber, whose Close drains it, as upstream does.
func NewNATS(nc, subConn *nats.Conn, c jetstream.Config, logger *slog.Logger) (message.Publisher, *wmnats.Subscriber, error) {
	if c.Partitions != 0 {
		return nil, nil, fmt.Errorf("watermill-nats: partitions are not supported (got %d)", c.Partitions)
	}
	wl := watermill.NewSlogLogger(logger)
	wire := jetstream.WireFormat{Config: c}
	// Upstream passes the subscription's subject, not the topic, to
	// the durable's name: the topic is taken back out of it.
	durable := func(_, subject string) string {
		topic := strings.TrimSuffix(strings.TrimPrefix(subject, c.SubjectPrefix+"."), ".>")
		return c.Consumer + "_" + topic
	}
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
	maxInFlight := max(c.MaxInFlight, 1)
	maxPending := c.MaxBuffered
	if maxPending <= 0 {
		maxPending = 16 * maxInFlight
	}
	opts := []nats.SubOpt{
		nats.BindStream(c.Stream),
		nats.DeliverAll(),
		nats.AckExplicit(),
		// The subscriber acks or naks once the router settled the
		// message; nats.go must not ack when the callback returns.
		nats.ManualAck(),
		nats.AckWait(c.AckWait),
		nats.MaxAckPending(maxPending),
	}
	if c.MaxDeliver != 0 {
		opts = append(opts, nats.MaxDeliver(c.MaxDeliver))
	}
	sub, err := wmnats.NewSubscriberWithNatsConn(subConn, wmnats.SubscriberSubscriptionConfig{
		Unmarshaler:       wire,
		SubscribersCount:  maxInFlight,
		AckWaitTimeout:    c.AckWait,
		CloseTimeout:      c.DrainTimeout,
		SubjectCalculator: subjects(c),
		NakDelay:          wmnats.NewStaticDelay(NackDelay),
		QueueGroupPrefix:  c.Consumer,
		JetStream: wmnats.JetStreamConfig{
			SubscribeOptions:  opts,
			DurableCalculator: durable,
			DurablePrefix:     c.Consumer,
			// An ack that is lost is a redelivery, which the dedup
			// ledger recognises; waiting for the server's confirmation
			// of each would cost a round trip per message.
			AckAsync: true,
		},
	}, wl)
	if err != nil {
		return nil, nil, fmt.Errorf("watermill-nats: subscriber: %w", err)
	}
	return keepConn{pub}, sub, nil
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
