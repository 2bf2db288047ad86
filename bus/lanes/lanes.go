package lanes

import (
	"context"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Settle is called once per pushed message with the router's verdict:
// acked true after Ack, false after Nack or when the lanes stop first.
type Settle func(acked bool)

// Options tunes Lanes.
type Options struct {
	// MaxInFlight bounds the messages released to the router at once.
	MaxInFlight int
	// MaxBuffered bounds the messages held (in flight or queued behind
	// their key); Push blocks beyond it. Default 16 × MaxInFlight.
	MaxBuffered int
	// Touch, when set, is called every TouchEvery for each message in
	// flight, so that a bus can extend its ack deadline (JetStream
	// InProgress) while a long action runs.
	TouchEvery time.Duration
	// Redeliver, when set, keeps a nacked message in its key's lane:
	// after the delay it returns, a fresh copy (same UUID, payload and
	// metadata) is released again, before the key's later messages, and
	// the message holds no in-flight slot while it waits, so that a key
	// backing off does not starve the others. The message then settles
	// only when a copy is acked, or as not acked when the lanes stop.
	Redeliver func(nacked *message.Message) time.Duration
	// Slots, when set, holds the in-flight slots instead of MaxInFlight:
	// lanes that share it share one bound (a bus consuming several
	// partitions with one lanes each).
	Slots chan struct{}
	// Buffered, when set, holds the buffered room instead of
	// MaxBuffered, shared the same way.
	Buffered chan struct{}
}

// Lanes is the dispatcher. Create it with New. Drain stops releasing
// new messages (held ones settle as not acked) while released ones run
// to their end; when the ctx given to New ends, everything still held
// settles as not acked at once.
type Lanes struct {
	ctx       context.Context
	draining  chan struct{}
	drainOne  sync.Once
	out       chan *message.Message
	inflight  chan struct{}
	buffered  chan struct{}
	touch     time.Duration
	redeliver func(*message.Message) time.Duration

	// handoff gives a key whose lane just started to a worker that is
	// waiting for one; Push starts a new worker when none is.
	handoff chan string

	mu    sync.Mutex
	lanes map[string][]item
	wg    sync.WaitGroup
}

// workerIdle is how long a worker whose lane emptied waits for another
// key before it ends. Under load a worker drains lane after lane: a
// goroutine per message (whose stack grows to the router's depth each
// time) cost more than the hand-off itself.
const workerIdle = time.Second

type item struct {
	msg    *message.Message
	settle Settle
	touch  func()
}

// New starts a dispatcher that lives as long as ctx.
func New(ctx context.Context, o Options) *Lanes {
	if o.MaxInFlight < 1 {
		o.MaxInFlight = 1
	}
	if o.MaxBuffered < o.MaxInFlight {
		o.MaxBuffered = 16 * o.MaxInFlight
	}
	if o.Slots == nil {
		o.Slots = make(chan struct{}, o.MaxInFlight)
	}
	if o.Buffered == nil {
		o.Buffered = make(chan struct{}, o.MaxBuffered)
	}
	return &Lanes{
		ctx:       ctx,
		draining:  make(chan struct{}),
		out:       make(chan *message.Message),
		inflight:  o.Slots,
		buffered:  o.Buffered,
		touch:     o.TouchEvery,
		redeliver: o.Redeliver,
		lanes:     map[string][]item{},
		handoff:   make(chan string),
	}
}

// Out is the channel to hand to the router (a Subscriber's Subscribe
// result). It is closed by Close.
func (l *Lanes) Out() <-chan *message.Message { return l.out }

// Push queues msg behind the earlier messages of key. It blocks while
// MaxBuffered messages are held, and returns false (having settled
// nothing) when the lanes are stopping. touch may be nil.
func (l *Lanes) Push(key string, msg *message.Message, settle Settle, touch func()) bool {
	select {
	case <-l.draining:
		return false
	default:
	}
	select {
	case l.buffered <- struct{}{}:
	case <-l.draining:
		return false
	case <-l.ctx.Done():
		return false
	}
	it := item{msg: msg, settle: settle, touch: touch}
	l.mu.Lock()
	q, busy := l.lanes[key]
	l.lanes[key] = append(q, it)
	l.mu.Unlock()
	if !busy {
		select {
		case l.handoff <- key:
		default:
			l.wg.Add(1)
			go l.work(key)
		}
	}
	return true
}

// work drains the lane of key, then the lanes handed to it, until none
// came for workerIdle or the lanes stop.
func (l *Lanes) work(key string) {
	defer l.wg.Done()
	w := &worker{}
	defer w.stop()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		l.drain(key, w)
		idle.Reset(workerIdle)
		select {
		case key = <-l.handoff:
		case <-idle.C:
			return
		case <-l.draining:
			return
		case <-l.ctx.Done():
			return
		}
	}
}

// worker is what a worker keeps from lane to lane: the ticker that
// touches the message in flight.
type worker struct{ ticker *time.Ticker }

// tick starts a fresh touch period for a message and returns its
// channel: one period across the message's redeliveries, since waits
// shorter than TouchEvery must not each start a fresh one, or a message
// nacked again and again would never be touched.
func (w *worker) tick(every time.Duration) <-chan time.Time {
	if w.ticker == nil {
		w.ticker = time.NewTicker(every)
	} else {
		w.ticker.Reset(every)
	}
	return w.ticker.C
}

func (w *worker) stop() {
	if w.ticker != nil {
		w.ticker.Stop()
	}
}

// drain releases the messages of one key in order, until its lane is
// empty.
func (l *Lanes) drain(key string, w *worker) {
	for {
		l.mu.Lock()
		q := l.lanes[key]
		if len(q) == 0 {
			delete(l.lanes, key)
			l.mu.Unlock()
			return
		}
		it := q[0]
		l.mu.Unlock()

		var tick <-chan time.Time
		if l.touch > 0 && it.touch != nil {
			tick = w.tick(l.touch)
		}
		it.settle(l.releaseUntilAcked(it, tick))
		w.stop()

		l.mu.Lock()
		l.lanes[key] = l.lanes[key][1:]
		l.mu.Unlock()
		<-l.buffered
	}
}

// releaseUntilAcked releases it, and again after each nack when
// Redeliver is set; it reports whether a copy was acked. tick touches
// it meanwhile.
func (l *Lanes) releaseUntilAcked(it item, tick <-chan time.Time) bool {
	for {
		acked := l.release(it, tick)
		if acked || l.redeliver == nil || !nacked(it.msg) {
			return acked
		}
		if !l.wait(it, l.redeliver(it.msg), tick) {
			return false
		}
		c := message.NewMessageWithContext(it.msg.Context(), it.msg.UUID, it.msg.Payload)
		for k, v := range it.msg.Metadata {
			c.Metadata.Set(k, v)
		}
		it.msg = c
	}
}

// wait sleeps d before a redelivery, touching it as if it were in
// flight (the bus must not redeliver it meanwhile); false when the lanes
// stop first.
func (l *Lanes) wait(it item, d time.Duration, tick <-chan time.Time) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return true
		case <-tick:
			it.touch()
		case <-l.draining:
			return false
		case <-l.ctx.Done():
			return false
		}
	}
}

func nacked(m *message.Message) bool {
	select {
	case <-m.Nacked():
		return true
	default:
		return false
	}
}

func (l *Lanes) release(it item, tick <-chan time.Time) bool {
	select {
	case <-l.draining:
		return false
	default:
	}
	select {
	case l.inflight <- struct{}{}:
	case <-l.draining:
		return false
	case <-l.ctx.Done():
		return false
	}
	defer func() { <-l.inflight }()
	select {
	case l.out <- it.msg:
	case <-l.draining:
		return false
	case <-l.ctx.Done():
		return false
	}
	for {
		select {
		case <-it.msg.Acked():
			return true
		case <-it.msg.Nacked():
			return false
		case <-tick:
			it.touch()
		case <-l.ctx.Done():
			// The router may still be running the handler; it will
			// ack or nack shortly, but the bus must redeliver anyway.
			return false
		}
	}
}

// Drain stops releasing messages: Push returns false, queued messages
// settle as not acked, released ones run until the router settles them.
func (l *Lanes) Drain() { l.drainOne.Do(func() { close(l.draining) }) }

// Wait blocks until every held message has settled or timeout passes,
// and reports whether they all settled. Call it after Drain: until then
// the lanes' workers wait for more work.
func (l *Lanes) Wait(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Close drains, waits for every lane to settle (after the ctx given to
// New ends, that is immediate), then closes Out. Call it once.
func (l *Lanes) Close() {
	l.Drain()
	l.wg.Wait()
	close(l.out)
}
