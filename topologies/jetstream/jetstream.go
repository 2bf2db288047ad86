// Package jetstream is millrace's bus over NATS JetStream, shared by the
// embedded, nats and multidb topologies: a Watermill Publisher that sets
// Nats-Msg-Id to the message UUID (so the stream drops republished
// changes within its duplicate window) and a Watermill Subscriber over a
// durable pull consumer.
//
// The subscriber is written on nats.go rather than taken from
// watermill-nats because that one releases one message per subscription
// at a time and cannot delay a redelivery per message. Here messages are
// fetched in batches and released through lanes: in order per entity,
// in parallel across entities, acked only after the handler succeeded,
// nacked with the delay the handler asked for.
package jetstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/millrace/millrace/topologies/lanes"
)

// Metadata keys the bus reads from messages.
const (
	// KeyMetadata is the ordering key of a message (see event.Event.Key).
	KeyMetadata = "millrace_key"
	// SubjectMetadata, when set, is appended to the topic's subject
	// (dot-separated tokens, e.g. "orders_db.Order.UPDATE").
	SubjectMetadata = "millrace_subject"
	// RetryDelayMetadata is a duration ("250ms") the handler sets on a
	// message before it nacks it: the bus redelivers after that delay.
	RetryDelayMetadata = "millrace_retry_delay"

	uuidHeader = "Millrace-Uuid"
	keyHeader  = "Millrace-Key"
	// Other metadata travels as headers with this prefix.
	metaPrefix = "Millrace-Md-"
)

// Config is the bus's config.
type Config struct {
	// Stream is the JetStream stream; SubjectPrefix its subjects' root.
	Stream        string
	SubjectPrefix string
	// Consumer is the durable consumer name prefix; each topic gets
	// Consumer + "_" + topic.
	Consumer string
	// AckWait, MaxDeliver: consumer settings.
	AckWait    time.Duration
	MaxDeliver int
	// MaxAge, Replicas, DuplicateWindow: stream settings.
	MaxAge          time.Duration
	Replicas        int
	DuplicateWindow time.Duration
	// MaxInFlight bounds the messages handled at once.
	MaxInFlight int
	// DrainTimeout bounds how long Close waits for released messages
	// to settle before it cancels their contexts.
	DrainTimeout time.Duration
	// Memory keeps the stream in memory instead of files (tests).
	Memory bool
}

// Subject returns the subject of topic with a suffix. An empty suffix
// becomes "_": a topic's consumers filter on "<prefix>.<topic>.>", which
// needs at least one token after the topic.
func (c Config) Subject(topic, suffix string) string {
	if suffix == "" {
		suffix = "_"
	}
	return c.SubjectPrefix + "." + topic + "." + suffix
}

// Token makes s safe as one subject token: no dots, spaces or wildcards.
func Token(s string) string {
	if s == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', ' ', '*', '>', '\t', '\r', '\n':
			return '_'
		}
		return r
	}, s)
}

// EnsureStream creates the stream or updates it to c.
func EnsureStream(ctx context.Context, js jetstream.JetStream, c Config) (jetstream.Stream, error) {
	sc := jetstream.StreamConfig{
		Name:       c.Stream,
		Subjects:   []string{c.SubjectPrefix + ".>"},
		Retention:  jetstream.LimitsPolicy,
		MaxAge:     c.MaxAge,
		Replicas:   max(c.Replicas, 1),
		Duplicates: c.DuplicateWindow,
		Storage:    jetstream.FileStorage,
	}
	if c.Memory {
		sc.Storage = jetstream.MemoryStorage
	}
	s, err := js.CreateOrUpdateStream(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: ensure stream %s: %w", c.Stream, err)
	}
	return s, nil
}

// Publisher publishes to JetStream and waits for every PubAck.
type Publisher struct {
	js  jetstream.JetStream
	cfg Config
}

// NewPublisher returns a publisher on js. It does not own the connection.
func NewPublisher(js jetstream.JetStream, cfg Config) *Publisher {
	return &Publisher{js: js, cfg: cfg}
}

// Publish sends msgs asynchronously and waits for all their acks; the
// message UUID is the Nats-Msg-Id.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	for _, m := range msgs {
		nm := nats.NewMsg(p.cfg.Subject(topic, m.Metadata.Get(SubjectMetadata)))
		nm.Data = m.Payload
		// The duplicate window is stream-wide; the topic in the id keeps
		// the same message on two topics from being dropped as one.
		nm.Header.Set(jetstream.MsgIDHeader, topic+":"+m.UUID)
		nm.Header.Set(uuidHeader, m.UUID)
		for k, v := range m.Metadata {
			switch k {
			case KeyMetadata:
				nm.Header.Set(keyHeader, v)
			case SubjectMetadata, RetryDelayMetadata:
			default:
				nm.Header[metaPrefix+k] = []string{v}
			}
		}
		f, err := p.js.PublishMsgAsync(nm)
		if err != nil {
			return fmt.Errorf("jetstream: publish %s: %w", m.UUID, err)
		}
		futures = append(futures, f)
	}
	var errs []error
	for i, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			errs = append(errs, fmt.Errorf("jetstream: publish %s: %w", msgs[i].UUID, err))
		case <-time.After(30 * time.Second):
			errs = append(errs, fmt.Errorf("jetstream: publish %s: no ack within 30s", msgs[i].UUID))
		}
	}
	return errors.Join(errs...)
}

// Close does nothing: the connection belongs to the caller.
func (p *Publisher) Close() error { return nil }

// Subscriber consumes a topic through a durable pull consumer shared by
// every process that uses the same Config.Consumer.
type Subscriber struct {
	js     jetstream.JetStream
	cfg    Config
	logger *slog.Logger

	mu     sync.Mutex
	closed bool
	stops  []func()
}

// NewSubscriber returns a subscriber on js. It does not own the connection.
func NewSubscriber(js jetstream.JetStream, cfg Config, logger *slog.Logger) *Subscriber {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Subscriber{js: js, cfg: cfg, logger: logger}
}

// ConsumerName is the durable consumer of topic.
func (s *Subscriber) ConsumerName(topic string) string {
	return Token(s.cfg.Consumer + "_" + topic)
}

// Subscribe starts consuming topic. The channel closes after ctx ends or
// Close is called and every released message has settled.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("jetstream: subscriber closed")
	}
	maxInFlight := max(s.cfg.MaxInFlight, 1)
	cc := jetstream.ConsumerConfig{
		Durable:       s.ConsumerName(topic),
		FilterSubject: s.cfg.Subject(topic, ">"),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.cfg.AckWait,
		MaxDeliver:    s.cfg.MaxDeliver,
		MaxAckPending: 16 * maxInFlight,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	cons, err := s.js.CreateOrUpdateConsumer(ctx, s.cfg.Stream, cc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: consumer %s: %w", cc.Durable, err)
	}
	// A missed heartbeat on a busy machine is not fatal: the iterator
	// re-pulls by itself, so it must not end the subscription.
	it, err := cons.Messages(jetstream.PullMaxMessages(min(4*maxInFlight, 1000)),
		jetstream.PullExpiry(5*time.Second), jetstream.WithMessagesErrOnMissingHeartbeat(false))
	if err != nil {
		return nil, fmt.Errorf("jetstream: consume %s: %w", cc.Durable, err)
	}
	// Message contexts outlive Close for up to DrainTimeout, so that
	// in-flight actions finish instead of failing at shutdown.
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l := lanes.New(lctx, lanes.Options{MaxInFlight: maxInFlight, MaxBuffered: cc.MaxAckPending, TouchEvery: s.cfg.AckWait / 3})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			jm, err := it.Next()
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return
			}
			if err != nil {
				// Keep consuming: the router must not go on running with
				// a subscription that silently stopped.
				s.logger.Warn("jetstream: pull failed; retrying", "consumer", cc.Durable, "err", err)
				select {
				case <-time.After(time.Second):
				case <-lctx.Done():
					return
				}
				continue
			}
			msg, key, cancelMsg := toMessage(lctx, jm)
			settleMsg := settle(jm, msg, s.logger)
			if !l.Push(key, msg, func(acked bool) { settleMsg(acked); cancelMsg() }, func() { _ = jm.InProgress() }) {
				cancelMsg()
				_ = jm.Nak()
				return
			}
		}
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			it.Stop()
			<-done
			l.Drain()
			if !l.Wait(s.cfg.DrainTimeout) {
				s.logger.Warn("jetstream: drain timeout; in-flight messages will be redelivered", "consumer", cc.Durable)
			}
			cancel()
			l.Close()
		})
	}
	s.stops = append(s.stops, stop)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return l.Out(), nil
}

func toMessage(ctx context.Context, jm jetstream.Msg) (*message.Message, string, context.CancelFunc) {
	h := jm.Headers()
	id := h.Get(uuidHeader)
	if id == "" {
		id = h.Get(jetstream.MsgIDHeader)
	}
	// Each message has its own context, ended when it settles (or when
	// the subscription stops), as Watermill subscribers do.
	mctx, cancel := context.WithCancel(ctx)
	msg := message.NewMessageWithContext(mctx, id, jm.Data())
	key := h.Get(keyHeader)
	if key == "" {
		key = jm.Subject()
	}
	msg.Metadata.Set(KeyMetadata, key)
	for k, v := range h {
		if strings.HasPrefix(k, metaPrefix) && len(v) > 0 {
			msg.Metadata.Set(k[len(metaPrefix):], v[0])
		}
	}
	if md, err := jm.Metadata(); err == nil {
		msg.Metadata.Set("millrace_delivery", fmt.Sprint(md.NumDelivered))
	}
	return msg, key, cancel
}

func settle(jm jetstream.Msg, msg *message.Message, logger *slog.Logger) lanes.Settle {
	return func(acked bool) {
		if acked {
			if err := jm.Ack(); err != nil {
				logger.Warn("jetstream: ack failed; the message will be redelivered", "uuid", msg.UUID, "err", err)
			}
			return
		}
		var err error
		if d, perr := time.ParseDuration(msg.Metadata.Get(RetryDelayMetadata)); perr == nil && d > 0 {
			err = jm.NakWithDelay(d)
		} else {
			err = jm.Nak()
		}
		if err != nil {
			logger.Warn("jetstream: nak failed; the message will be redelivered after ack_wait", "uuid", msg.UUID, "err", err)
		}
	}
}

// Close stops every subscription; in-flight messages are nacked.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	stops := s.stops
	s.stops, s.closed = nil, true
	s.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
	return nil
}
