package jetstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/internal/lazyctx"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/millrace/millrace/bus/lanes"
	"github.com/millrace/millrace/bus/partition"
)

// Headers of the messages on the stream; bus.KeyMetadata travels as
// keyHeader, other metadata with metaPrefix.
const (
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
	// MaxBuffered bounds the messages held, in flight or queued, and
	// unacked on the server (the consumer's MaxAckPending). Default
	// 16 × MaxInFlight.
	MaxBuffered int
	// DrainTimeout bounds how long Close waits for released messages
	// to settle before it cancels their contexts.
	DrainTimeout time.Duration
	// Memory keeps the stream in memory instead of files (tests).
	Memory bool
	// Partitions, when > 0, splits each topic into that many partitions
	// by ordering key, each with its own durable consumer that one
	// worker process at a time consumes (package partition): events of
	// one entity then stay in order across several worker processes.
	// Every process of one stream must use the same value.
	Partitions int
	// PartitionTTL is how long a dead worker's partitions wait before
	// another worker takes them over. Default 10s.
	PartitionTTL time.Duration
	// Member names this process among the workers; default
	// "<hostname>-<pid>-<random>".
	Member string
}

// defaultRedeliverDelay is the wait before a nacked message that asked
// for no delay is released again.
const defaultRedeliverDelay = 100 * time.Millisecond

// Subject returns the subject of topic with a suffix. An empty suffix
// becomes "_": a topic's consumers filter on "<prefix>.<topic>.>", which
// needs at least one token after the topic.
func (c Config) Subject(topic, suffix string) string {
	if suffix == "" {
		suffix = "_"
	}
	return c.SubjectPrefix + "." + topic + "." + suffix
}

// StreamSubjects are the stream's subjects: "<prefix>.>", or with
// partitions only the partitions' "<prefix>.*.<p>.>", so that a producer
// that publishes around millrace onto a subject no consumer reads is
// refused by the server rather than stored and never delivered.
func (c Config) StreamSubjects() []string {
	if c.Partitions <= 0 {
		return []string{c.SubjectPrefix + ".>"}
	}
	subjects := make([]string, c.Partitions)
	for p := range subjects {
		subjects[p] = c.SubjectPrefix + ".*." + strconv.Itoa(p) + ".>"
	}
	return subjects
}

// PartitionSubject is Subject with the partition of key as the token
// after the topic ("<prefix>.<topic>.<p>.<suffix>"), when Partitions > 0.
func (c Config) PartitionSubject(topic, key, suffix string) string {
	if c.Partitions <= 0 {
		return c.Subject(topic, suffix)
	}
	if suffix == "" {
		suffix = "_"
	}
	return c.Subject(topic, strconv.Itoa(partition.Of(key, c.Partitions))+"."+suffix)
}

// EnsureStream creates the stream or updates it to c.
func EnsureStream(ctx context.Context, js jetstream.JetStream, c Config) (jetstream.Stream, error) {
	sc := jetstream.StreamConfig{
		Name:       c.Stream,
		Subjects:   c.StreamSubjects(),
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

// Subscriber consumes a topic through a durable pull consumer shared by
// every process that uses the same Config.Consumer.
type Subscriber struct {
	js      jetstream.JetStream
	cfg     Config
	logger  *slog.Logger
	metrics *Metrics

	// acquired runs on each partition taken (OnAcquire).
	acquired bus.AcquireHook

	mu     sync.Mutex
	closed bool
	stops  []func()

	// noKey is logged once: a producer that leaves out Millrace-Key
	// and whose payload is not an event envelope.
	noKey sync.Once
}

// NewSubscriber returns a subscriber on js. It does not own the connection.
// metrics may be nil.
func NewSubscriber(js jetstream.JetStream, cfg Config, metrics *Metrics, logger *slog.Logger) *Subscriber {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if metrics == nil {
		metrics = NewMetrics()
	}
	return &Subscriber{js: js, cfg: cfg, metrics: metrics, logger: logger}
}

// ConsumerName is the durable consumer of topic.
func (s *Subscriber) ConsumerName(topic string) string {
	return bus.Token(s.cfg.Consumer + "_" + topic)
}

// Subscribe starts consuming topic. The channel closes after ctx ends or
// Close is called and every released message has settled.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("jetstream: subscriber closed")
	}
	var (
		out  <-chan *message.Message
		stop func()
		err  error
	)
	if s.cfg.Partitions > 0 {
		out, stop, err = s.subscribePartitions(ctx, topic)
	} else {
		out, stop, err = s.consume(ctx, s.ConsumerName(topic), s.cfg.Subject(topic, ">"), false, partition.Share{})
	}
	if err != nil {
		return nil, err
	}
	var once sync.Once
	stopOnce := func() { once.Do(stop) }
	s.stops = append(s.stops, stopOnce)
	go func() {
		<-ctx.Done()
		stopOnce()
	}()
	return out, nil
}

// subscribePartitions consumes the partitions of topic that this process
// leases (package partition), one durable consumer each, into one channel.
func (s *Subscriber) subscribePartitions(ctx context.Context, topic string) (<-chan *message.Message, func(), error) {
	ttl := s.cfg.PartitionTTL
	if ttl <= 0 {
		ttl = 10 * time.Second
	}
	bucket := bus.Token(s.cfg.Stream+"_"+s.ConsumerName(topic)) + "_partitions"
	var leases *partition.KVLeases
	// A cluster electing a leader (a node just died) answers nothing for
	// a few seconds: the worker waits for it rather than exit.
	for wait := 250 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		l, err := partition.NewKVLeases(ctx, s.js, bucket, ttl, s.cfg.Replicas)
		if err == nil {
			leases = l
			break
		}
		if !Unavailable(err) || ctx.Err() != nil {
			return nil, nil, fmt.Errorf("jetstream: %w", err)
		}
		s.logger.Warn("jetstream: the partition leases' bucket does not answer; waiting for it", "bucket", bucket,
			"retry_in", wait.String(), "err", err)
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("jetstream: partition leases: %w", ctx.Err())
		case <-time.After(wait):
		}
	}
	member := s.cfg.Member
	if member == "" {
		member = defaultMember()
	}
	maxInFlight := max(s.cfg.MaxInFlight, 1)
	// The partitions share the bounds of one subscription: in flight,
	// held in the lanes, and fetched ahead.
	out, stop, _ := partition.FanIn(ctx, leases, partition.FanInConfig{
		Config: partition.Config{
			Partitions: s.cfg.Partitions, Member: member, TTL: ttl,
			Logger:   s.logger.With("topic", topic),
			Acquired: s.acquired.Bind(s.cfg.Partitions),
		},
		MaxInFlight: maxInFlight, MaxBuffered: s.maxBuffered(), ReadAhead: 4 * maxInFlight,
	}, func(p int, sh partition.Share) (func(), error) {
		pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		name := bus.Token(s.ConsumerName(topic) + "_p" + strconv.Itoa(p))
		filter := s.cfg.Subject(topic, strconv.Itoa(p)+".>")
		_, stop, err := s.consume(pctx, name, filter, true, sh)
		if err != nil {
			cancel()
			return nil, err
		}
		return func() { stop(); cancel() }, nil
	})
	return out, stop, nil
}

// defaultMember names a subscriber among the workers: unique to it, also
// among several subscribers of one process. (The first characters of a
// NUID are its process-wide prefix, so a prefix of one would name every
// subscriber of a process alike, and each would renew the others' leases
// as its own.)
func defaultMember() string {
	host, _ := os.Hostname()
	return bus.Token(fmt.Sprintf("%s-%d-%s", host, os.Getpid(), nuid.Next()))
}

// consume runs one durable consumer through lanes until stop, within
// the bounds of sh (the zero Share gives it bounds of its own) and
// releasing into sh.Out when it is set (the channel returned is then
// nil). reset
// restarts the consumer at its ack floor first, so that a new owner of
// a partition gets the messages its last owner left unacked before the
// later ones, in stream order.
func (s *Subscriber) consume(ctx context.Context, durable, filter string, reset bool, sh partition.Share) (<-chan *message.Message, func(), error) {
	maxInFlight := max(s.cfg.MaxInFlight, 1)
	if sh.ReadAhead == 0 {
		sh.ReadAhead = min(4*maxInFlight, 1000)
	}
	cc := jetstream.ConsumerConfig{
		Durable:       durable,
		FilterSubject: filter,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.cfg.AckWait,
		MaxDeliver:    s.cfg.MaxDeliver,
		MaxAckPending: s.maxBuffered(),
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	pl, err := s.openPuller(ctx, cc, reset, sh.ReadAhead)
	if err != nil {
		return nil, nil, err
	}
	// Message contexts outlive Close for up to DrainTimeout, so that
	// in-flight actions finish instead of failing at shutdown.
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	// A nacked message waits in its lane (touched, so the server does not
	// redeliver it meanwhile) and runs again before the later messages of
	// its entity.
	l := lanes.New(lctx, lanes.Options{
		MaxInFlight: maxInFlight, MaxBuffered: cc.MaxAckPending, TouchEvery: s.cfg.AckWait / 3,
		Redeliver: redeliverDelay, Slots: sh.Slots, Buffered: sh.Buffered, Out: sh.Out,
	})
	cur := &current{pl: pl}
	acks := newAcker(s.js.Conn(), s.logger)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var last uint64 // the consumer sequence of the last delivery
		for {
			nm, err := pl.next()
			if err != nil {
				return // stopped
			}
			// Only a consumer read by this process alone (a leased
			// partition) can tell a lost delivery from one that went to
			// another reader.
			if seq := consumerSeq(nm.Reply); reset && seq > 0 {
				if last > 0 && seq > last+1 {
					// Deliveries last+1..seq-1 never came (a server died
					// with them on the wire, or the connection dropped
					// them): the server would redeliver them after
					// ack_wait, behind later events of their entities.
					// Reading again from the ack floor brings them back
					// first; what was acked since comes again and the
					// dedup ledger skips it.
					s.logger.Warn("jetstream: deliveries were lost on the way; restarting the consumer at its ack floor to keep each entity's order",
						"consumer", cc.Durable, "lost_from", last+1, "lost_to", seq-1)
					if pl = s.restartAtAckFloor(lctx, cc, sh.ReadAhead, cur); pl == nil {
						return // stopped
					}
					last = 0
					continue
				}
				last = seq
			}
			msg, key, mctx := s.toMessage(lctx, nm)
			settleMsg := settle(pl, acks, nm, msg, s.logger)
			if !l.Push(key, msg, func(acked bool) { settleMsg(acked); mctx.Cancel() }, func() { _ = pl.inProgress(nm) }) {
				mctx.Cancel()
				_ = pl.nak(nm)
				return
			}
		}
	}()
	stop := func() {
		cur.stop()
		<-done
		l.Drain()
		if !l.Wait(s.cfg.DrainTimeout) {
			s.logger.Warn("jetstream: drain timeout; in-flight messages will be redelivered", "consumer", cc.Durable)
		}
		cancel()
		l.Close()
		acks.close()
	}
	return l.Out(), stop, nil
}

// current is the puller a consume loop reads, which a restart at the ack
// floor replaces while stop may be called.
type current struct {
	mu      sync.Mutex
	pl      *puller
	stopped bool
}

func (c *current) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.stopped {
		c.stopped = true
		c.pl.stop()
	}
}

// swap installs pl in place of the current puller, which it stops; false
// (and pl stopped) when the loop was stopped meanwhile.
func (c *current) swap(pl *puller) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		pl.stop()
		return false
	}
	c.pl.stop()
	c.pl = pl
	return true
}

// openPuller ensures cc's consumer (see ensureConsumer for reset) and
// returns a puller on it.
func (s *Subscriber) openPuller(ctx context.Context, cc jetstream.ConsumerConfig, reset bool, readAhead int) (*puller, error) {
	cons, err := s.ensureConsumer(ctx, cc, reset)
	if err != nil {
		return nil, err
	}
	return newPuller(s.js, s.cfg.Stream, cc.Durable, readAhead, int64(cons.CachedInfo().NumPending), s.metrics, s.logger)
}

// restartAtAckFloor recreates cc's consumer at its ack floor and returns
// a puller on it, retrying until it succeeds or the loop is stopped (nil).
func (s *Subscriber) restartAtAckFloor(ctx context.Context, cc jetstream.ConsumerConfig, readAhead int, cur *current) *puller {
	for wait := 250 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		pl, err := s.openPuller(ctx, cc, true, readAhead)
		if err == nil {
			if !cur.swap(pl) {
				return nil
			}
			return pl
		}
		s.logger.Warn("jetstream: cannot restart the consumer at its ack floor; trying again", "consumer", cc.Durable,
			"retry_in", wait.String(), "err", err)
		cur.mu.Lock()
		stopped := cur.stopped
		cur.mu.Unlock()
		if stopped || ctx.Err() != nil {
			return nil
		}
		time.Sleep(wait)
	}
}

// consumerSeq is the consumer sequence of a delivery from its ack
// subject ($JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.
// <pending>, or with <domain>.<account hash> after ACK and a last token
// on newer servers); 0 when reply is not one.
func consumerSeq(reply string) uint64 {
	seq, _, _ := replyNumber(reply, ackConsumerSeqToken)
	return seq
}

// Positions of the ack reply subject's tokens in its first form,
// "$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
// seq>.<time>.<pending>"; its second form, of 11 tokens or more, has
// two more (domain, account hash) after "$JS.ACK".
const (
	ackDeliveredToken   = 4
	ackConsumerSeqToken = 6
)

// replyNumber reads the number at token pos of an ack reply subject
// (either form) and returns it with its text, a substring of reply; ok
// is false when reply is not one or the token not a number. nats.Msg's
// Metadata reads the same, with a struct and a slice of every token
// allocated per message.
func replyNumber(reply string, pos int) (n uint64, text string, ok bool) {
	const v1Tokens = 9
	tokens := strings.Count(reply, ".") + 1
	if !strings.HasPrefix(reply, "$JS.ACK.") || tokens < v1Tokens || (tokens > v1Tokens && tokens < 11) {
		return 0, "", false
	}
	if tokens > v1Tokens {
		pos += 2
	}
	for range pos {
		_, reply, _ = strings.Cut(reply, ".")
	}
	text, _, _ = strings.Cut(reply, ".")
	n, err := strconv.ParseUint(text, 10, 64)
	if err != nil {
		return 0, "", false
	}
	return n, text, true
}

func (s *Subscriber) maxBuffered() int {
	if s.cfg.MaxBuffered > 0 {
		return max(s.cfg.MaxBuffered, s.cfg.MaxInFlight)
	}
	return 16 * max(s.cfg.MaxInFlight, 1)
}

// ensureConsumer creates or updates the durable consumer of cc. With
// reset, a consumer that has unacked messages is recreated at its ack
// floor: its previous reader may have left some behind, and they must
// come before the later ones. Messages above the floor that were acked
// come again too; the dedup ledger skips them.
func (s *Subscriber) ensureConsumer(ctx context.Context, cc jetstream.ConsumerConfig, reset bool) (jetstream.Consumer, error) {
	if cur, err := s.js.Consumer(ctx, s.cfg.Stream, cc.Durable); err == nil {
		info := cur.CachedInfo()
		// The start of an existing consumer cannot change.
		cc.DeliverPolicy, cc.OptStartSeq = info.Config.DeliverPolicy, info.Config.OptStartSeq
		if reset && info.NumAckPending > 0 {
			if err := s.js.DeleteConsumer(ctx, s.cfg.Stream, cc.Durable); err != nil {
				return nil, fmt.Errorf("jetstream: reset consumer %s: %w", cc.Durable, err)
			}
			cc.DeliverPolicy, cc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, info.AckFloor.Stream+1
			s.logger.Info("jetstream: consumer restarted at its ack floor", "consumer", cc.Durable,
				"from", cc.OptStartSeq, "unacked", info.NumAckPending)
		}
	}
	cons, err := s.js.CreateOrUpdateConsumer(ctx, s.cfg.Stream, cc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: consumer %s: %w", cc.Durable, err)
	}
	return cons, nil
}

func redeliverDelay(m *message.Message) time.Duration {
	return lanes.RetryDelay(m, defaultRedeliverDelay)
}

func (s *Subscriber) toMessage(ctx context.Context, nm *nats.Msg) (*message.Message, string, *lazyctx.Ctx) {
	h := nm.Header
	id := h.Get(uuidHeader)
	if id == "" {
		id = h.Get(jetstream.MsgIDHeader)
	}
	// Each message has its own context, ended when it settles (or when
	// the subscription stops), as Watermill subscribers do; registered
	// with the subscription's only if a handler waits on it (lazyctx).
	mctx := lazyctx.WithCancel(ctx)
	msg := message.NewMessageWithContext(mctx, id, nm.Data)
	key := h.Get(keyHeader)
	if key == "" {
		// A producer that wrote around millrace without the header
		// (docs/bus.md): the key comes from the envelope, so that one
		// entity's events stay in order and other entities' do not wait
		// behind them. Other payloads keep the order of their subject,
		// one after another, which is said once in the log.
		var ok bool
		if key, ok = bus.KeyFromPayload(nm.Data); !ok {
			key = nm.Subject
			s.noKey.Do(func() {
				s.logger.Warn("jetstream: a message has no Millrace-Key header and no event envelope to take its key from: "+
					"such messages run one after another per subject; see docs/bus.md", "subject", nm.Subject, "uuid", id)
			})
		}
	}
	msg.Metadata.Set(bus.KeyMetadata, key)
	setMetadata(msg, nm)
	return msg, key, mctx
}

func settle(pl *puller, acks *acker, nm *nats.Msg, msg *message.Message, logger *slog.Logger) lanes.Settle {
	return func(acked bool) {
		if acked {
			if err := acks.ack(nm.Reply); err != nil {
				logger.Warn("jetstream: ack failed; the message will be redelivered", "uuid", msg.UUID, "err", err)
			}
			return
		}
		// Not acked before the lanes stopped: another reader (or this
		// one, later) gets it.
		if err := pl.nak(nm); err != nil {
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

// OnAcquire sets the hook run on each partition this subscriber takes,
// before it consumes it (bus.PartitionWatcher). Call it before
// Subscribe.
func (s *Subscriber) OnAcquire(hook bus.AcquireHook) { s.acquired = hook }
