package lanes

import (
	"context"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/bus"
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
	// TouchEvery, when set, is how often each held message's touch
	// (Push) is called once it has been held that long, in flight or
	// queued, so that a bus can extend its ack deadline (JetStream
	// InProgress) while a long action runs or a flood drains ahead of it.
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
	Slots *Slots
	// Buffered, when set, holds the buffered room instead of
	// MaxBuffered, shared the same way.
	Buffered chan struct{}
}

// Lanes is the dispatcher. The in-flight slots go to the tenants of
// the messages waiting for one in turn (bus.TenantMetadata, Slots), so
// that one tenant's flood delays another tenant's events by one turn,
// not by the flood, within the messages the lanes hold. Create it with New. Drain stops releasing
// new messages (held ones settle as not acked) while released ones run
// to their end; when the ctx given to New ends, everything still held
// settles as not acked at once.
type Lanes struct {
	ctx       context.Context
	draining  chan struct{}
	drainOne  sync.Once
	closed    chan struct{}
	out       chan *message.Message
	inflight  *Slots
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
	tenant string
	settle Settle
	touch  func()
	pushed time.Time
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
		o.Slots = NewSlots(o.MaxInFlight)
	}
	if o.Buffered == nil {
		o.Buffered = make(chan struct{}, o.MaxBuffered)
	}
	l := &Lanes{
		ctx:       ctx,
		draining:  make(chan struct{}),
		closed:    make(chan struct{}),
		out:       make(chan *message.Message),
		inflight:  o.Slots,
		buffered:  o.Buffered,
		touch:     o.TouchEvery,
		redeliver: o.Redeliver,
		lanes:     map[string][]item{},
		handoff:   make(chan string),
	}
	if l.touch > 0 {
		go l.sweep()
	}
	return l
}

// sweep touches every message held for TouchEvery or longer, every
// TouchEvery, until the lanes close or ctx ends: one ticker for all of
// them, whether they run, wait for a slot behind a flood, or wait to be
// released again after a nack.
func (l *Lanes) sweep() {
	t := time.NewTicker(l.touch)
	defer t.Stop()
	var due []func()
	for {
		select {
		case <-t.C:
		case <-l.closed:
			return
		case <-l.ctx.Done():
			return
		}
		before := time.Now().Add(-l.touch)
		l.mu.Lock()
		for _, q := range l.lanes {
			for _, it := range q {
				if it.touch != nil && it.pushed.Before(before) {
					due = append(due, it.touch)
				}
			}
		}
		l.mu.Unlock()
		for i, touch := range due {
			touch()
			due[i] = nil
		}
		due = due[:0]
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
	it := item{msg: msg, tenant: msg.Metadata.Get(bus.TenantMetadata), settle: settle, touch: touch}
	if l.touch > 0 {
		it.pushed = time.Now()
	}
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
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		l.drain(key)
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

// drain releases the messages of one key in order, until its lane is
// empty.
func (l *Lanes) drain(key string) {
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

		it.settle(l.releaseUntilAcked(it))

		l.mu.Lock()
		l.lanes[key] = l.lanes[key][1:]
		l.mu.Unlock()
		<-l.buffered
	}
}

// releaseUntilAcked releases it, and again after each nack when
// Redeliver is set; it reports whether a copy was acked.
func (l *Lanes) releaseUntilAcked(it item) bool {
	for {
		acked := l.release(it)
		if acked || l.redeliver == nil || !nacked(it.msg) {
			return acked
		}
		if !l.wait(l.redeliver(it.msg)) {
			return false
		}
		c := message.NewMessageWithContext(it.msg.Context(), it.msg.UUID, it.msg.Payload)
		for k, v := range it.msg.Metadata {
			c.Metadata.Set(k, v)
		}
		it.msg = c
	}
}

// wait sleeps d before a redelivery (sweep touches the message
// meanwhile: the bus must not redeliver it); false when the lanes stop
// first.
func (l *Lanes) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.draining:
		return false
	case <-l.ctx.Done():
		return false
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

func (l *Lanes) release(it item) bool {
	select {
	case <-l.draining:
		return false
	default:
	}
	if !l.inflight.acquire(it.tenant, l.draining, l.ctx.Done()) {
		return false
	}
	defer l.inflight.release()
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
	close(l.closed)
	close(l.out)
}
