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
	// lanes that share it share one bound and its workers (a bus
	// consuming several partitions with one lanes each).
	Slots *Slots
	// Buffered, when set, holds the buffered room instead of
	// MaxBuffered, shared the same way.
	Buffered chan struct{}
	// Out, when set, receives the released messages instead of a
	// channel of the lanes' own: the output of a subscription that
	// outlives them (a capture's, across reconnections). Out then
	// returns nil, and Close leaves Out open.
	Out chan<- *message.Message
	// Prepare, when set, is called by the worker on each message just
	// before it is released, and on each copy released again after a
	// nack: to build its payload off the pushing goroutine, to count
	// the attempt (Attempt), to give it its context.
	Prepare func(*message.Message)
}

// Lanes is the dispatcher. Keys whose next message may be released
// wait in a ready queue, in turn by tenant (bus.TenantMetadata), served
// by at most one worker per in-flight slot (Slots, whose queue and
// workers the lanes that share it share), so that one tenant's flood
// delays another tenant's events by one turn, not by the flood, within
// the messages the lanes hold. Create it with New. Drain
// stops releasing new messages (held ones settle as not acked) while
// released ones run to their end; when the ctx given to New ends,
// everything still held settles as not acked at once.
type Lanes struct {
	ctx       context.Context
	draining  chan struct{}
	drainOne  sync.Once
	closed    chan struct{}
	out       chan<- *message.Message
	own       chan *message.Message // out, when the lanes own it
	prepare   func(*message.Message)
	slots     *Slots
	buffered  chan struct{}
	touch     time.Duration
	redeliver func(*message.Message) time.Duration

	mu      sync.Mutex
	lanes   map[string][]item      // each key's held messages, the one released or due first
	waiting map[string]*time.Timer // keys whose first message waits to be released again
	drained bool                   // Drain ran: Push counts no more messages

	held sync.WaitGroup // one per held message
}

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
		out:       o.Out,
		prepare:   o.Prepare,
		slots:     o.Slots,
		buffered:  o.Buffered,
		touch:     o.TouchEvery,
		redeliver: o.Redeliver,
		lanes:     map[string][]item{},
		waiting:   map[string]*time.Timer{},
	}
	if l.out == nil {
		l.own = make(chan *message.Message)
		l.out = l.own
	}
	if l.touch > 0 {
		go l.sweep()
	}
	// Messages waiting to be released again settle at once when the
	// lanes stop (Drain does the same).
	context.AfterFunc(ctx, l.releaseWaiting)
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
// result). It is closed by Close. It is nil when Options.Out was given.
func (l *Lanes) Out() <-chan *message.Message { return l.own }

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
	if l.drained { // Close may be waiting for the held ones already
		l.mu.Unlock()
		<-l.buffered
		return false
	}
	l.held.Add(1)
	q, busy := l.lanes[key]
	l.lanes[key] = append(q, it)
	if !busy {
		l.slots.push(it.tenant, l, key)
	}
	l.mu.Unlock()
	return true
}

// serveFirst releases the first message of key, which a worker of the
// slots took from the ready queue.
func (l *Lanes) serveFirst(key string) {
	l.mu.Lock()
	it := l.lanes[key][0]
	l.mu.Unlock()
	l.serve(key, it)
}

// serve releases it, the first message of key, and settles it, or
// sets it to be released again after a nack; then the key's next
// message, if any, becomes ready.
func (l *Lanes) serve(key string, it item) {
	acked := l.release(it)
	if !acked && l.redeliver != nil && nacked(it.msg) && !l.stopping() {
		d := l.redeliver(it.msg)
		c := message.NewMessageWithContext(it.msg.Context(), it.msg.UUID, it.msg.Payload)
		for k, v := range it.msg.Metadata {
			c.Metadata.Set(k, v)
		}
		l.mu.Lock()
		l.lanes[key][0].msg = c
		l.waiting[key] = time.AfterFunc(d, func() { l.due(key) })
		stopping := l.stopping()
		l.mu.Unlock()
		if stopping { // Drain or the ctx's end may have missed the timer
			l.releaseWaiting()
		}
		return
	}
	it.settle(acked)
	l.mu.Lock()
	if q := l.lanes[key][1:]; len(q) > 0 {
		l.lanes[key] = q
		l.slots.push(q[0].tenant, l, key)
	} else {
		delete(l.lanes, key)
	}
	l.mu.Unlock()
	<-l.buffered
	l.held.Done()
}

// due makes key ready again once its redelivery delay has passed, or
// the lanes stop.
func (l *Lanes) due(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.waiting[key]; !ok {
		return
	}
	delete(l.waiting, key)
	l.slots.push(l.lanes[key][0].tenant, l, key)
}

// releaseWaiting makes every key waiting for a redelivery ready at once:
// the lanes are stopping, and its messages settle as not acked.
func (l *Lanes) releaseWaiting() {
	l.mu.Lock()
	var keys []string
	for key, t := range l.waiting {
		if t.Stop() {
			keys = append(keys, key)
		}
	}
	l.mu.Unlock()
	for _, key := range keys {
		l.due(key)
	}
}

func (l *Lanes) stopping() bool {
	select {
	case <-l.draining:
		return true
	case <-l.ctx.Done():
		return true
	default:
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
	if l.prepare != nil {
		l.prepare(it.msg)
	}
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
func (l *Lanes) Drain() {
	l.drainOne.Do(func() {
		close(l.draining)
		l.mu.Lock()
		l.drained = true
		l.mu.Unlock()
		l.releaseWaiting()
	})
}

// Wait blocks until every held message has settled or timeout passes,
// and reports whether they all settled. Call it after Drain.
func (l *Lanes) Wait(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() { l.held.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Close drains, waits for every held message to settle (after the ctx
// given to New ends, that is immediate), then closes Out. Call it once.
func (l *Lanes) Close() {
	l.Drain()
	l.held.Wait()
	close(l.closed)
	if l.own != nil {
		close(l.own)
	}
}
