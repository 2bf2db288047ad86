package jetstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ackTimeout bounds the wait for a Publish call's acks; they come back
// in parallel, so one bound serves the whole call.
const ackTimeout = 30 * time.Second

// Publisher publishes to JetStream and waits for every PubAck.
//
// Its messages go out as plain NATS publishes whose reply subject is
// "<inbox>.<call>.<i>", and one subscription on "<inbox>.>" settles
// them. nats.go's asynchronous publish does the same through a future
// per message (a map entry, two channels, a timer and a JSON decode of
// each ack); a capture publishes one message per change, and that was
// a tenth of its allocations.
type Publisher struct {
	nc      *nats.Conn
	cfg     Config
	timeout time.Duration

	start  sync.Once
	sub    *nats.Subscription
	subErr error
	inbox  string // "<inbox>."

	mu     sync.Mutex
	closed bool
	seq    uint64
	calls  map[uint64]*pubCall
}

// pubCall is one Publish call waiting for its acks. It is recycled:
// done is buffered and sent to, never closed.
type pubCall struct {
	n, left int
	acked   []bool  // per message, when n > 1
	errs    []error // per message, made on the first failure
	abort   error   // set when the publisher closed first
	done    chan struct{}
	timer   *time.Timer
}

var calls = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &pubCall{done: make(chan struct{}, 1), timer: t}
}}

func (c *pubCall) reset(n int) {
	c.n, c.left, c.errs, c.abort = n, n, nil, nil
	c.acked = c.acked[:0]
	if n > 1 {
		c.acked = append(c.acked, make([]bool, n)...)
	}
}

// waiting says whether message i has no ack yet.
func (c *pubCall) waiting(i int) bool {
	if c.n == 1 {
		return c.left == 1
	}
	return !c.acked[i]
}

// NewPublisher returns a publisher on js's connection. It does not own
// the connection; Close ends its ack subscription.
func NewPublisher(js jetstream.JetStream, cfg Config) *Publisher {
	return &Publisher{nc: js.Conn(), cfg: cfg, timeout: ackTimeout, calls: map[uint64]*pubCall{}}
}

// Publish sends msgs and waits for all their acks; the message UUID is
// the Nats-Msg-Id.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if err := p.subscribe(); err != nil {
		return err
	}
	c := calls.Get().(*pubCall)
	c.reset(len(msgs))
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		calls.Put(c)
		return errors.New("jetstream: publish on a closed publisher")
	}
	p.seq++
	id := p.seq
	p.calls[id] = c
	p.mu.Unlock()

	reply := strconv.AppendUint([]byte(p.inbox), id, 10)
	reply = append(reply, '.')
	for i, m := range msgs {
		nm := p.cfg.natsMsg(topic, m)
		nm.Reply = string(strconv.AppendInt(reply, int64(i), 10))
		if err := p.nc.PublishMsg(nm); err != nil {
			// The acks of the messages before it are not waited for:
			// the caller retries the call, and the duplicate window
			// drops what the stream already has.
			if !p.forget(id) {
				<-c.done
			}
			return fmt.Errorf("jetstream: publish %s: %w", m.UUID, err)
		}
	}

	var errs []error
	c.timer.Reset(p.timeout)
	select {
	case <-c.done:
		c.timer.Stop()
	case <-c.timer.C:
		if !p.forget(id) {
			<-c.done // settled as the timer fired
			break
		}
		for i, m := range msgs {
			if c.waiting(i) {
				errs = append(errs, fmt.Errorf("jetstream: publish %s: no ack within %s", m.UUID, p.timeout))
			}
		}
	}
	for i, m := range msgs {
		switch {
		case c.errs != nil && c.errs[i] != nil:
			errs = append(errs, fmt.Errorf("jetstream: publish %s: %w", m.UUID, c.errs[i]))
		case c.abort != nil && c.waiting(i):
			errs = append(errs, fmt.Errorf("jetstream: publish %s: %w", m.UUID, c.abort))
		}
	}
	calls.Put(c)
	return errors.Join(errs...)
}

// forget removes call id, reporting whether it was still waiting. A call
// no longer waiting has been settled, and its done sent to.
func (p *Publisher) forget(id uint64) bool {
	p.mu.Lock()
	_, waiting := p.calls[id]
	delete(p.calls, id)
	p.mu.Unlock()
	return waiting
}

// subscribe starts the ack subscription on first use.
func (p *Publisher) subscribe() error {
	p.start.Do(func() {
		p.inbox = p.nc.NewInbox() + "."
		p.sub, p.subErr = p.nc.Subscribe(p.inbox+">", p.settle)
		if p.subErr != nil {
			p.subErr = fmt.Errorf("jetstream: subscribe to publish acks: %w", p.subErr)
		}
	})
	return p.subErr
}

// settle records the reply m for the message its subject names.
func (p *Publisher) settle(m *nats.Msg) {
	tail := strings.TrimPrefix(m.Subject, p.inbox)
	dot := strings.IndexByte(tail, '.')
	if dot < 0 {
		return
	}
	id, err1 := strconv.ParseUint(tail[:dot], 10, 64)
	i, err2 := strconv.Atoi(tail[dot+1:])
	if err1 != nil || err2 != nil {
		return
	}
	err := ackError(m)
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.calls[id]
	if !ok || i < 0 || i >= c.n || !c.waiting(i) {
		return // timed out, not ours, or a second reply
	}
	if c.n > 1 {
		c.acked[i] = true
	}
	if err != nil {
		if c.errs == nil {
			c.errs = make([]error, c.n)
		}
		c.errs[i] = err
	}
	c.left--
	if c.left == 0 {
		delete(p.calls, id)
		c.done <- struct{}{}
	}
}

// ackError is what the stream's reply m says went wrong, or nil for a
// PubAck. A PubAck ({"stream":"S", "seq":N}) is recognised without
// decoding it; anything else is decoded as the API's response.
func ackError(m *nats.Msg) error {
	if len(m.Data) == 0 {
		if m.Header.Get("Status") == "503" {
			return jetstream.ErrNoStreamResponse
		}
		return fmt.Errorf("jetstream: empty reply to a publish (status %q)", m.Header.Get("Status"))
	}
	if bytes.HasPrefix(m.Data, []byte(`{"stream":`)) && !bytes.Contains(m.Data, []byte(`"error"`)) {
		return nil
	}
	var r struct {
		Error  *jetstream.APIError `json:"error"`
		Stream string              `json:"stream"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return fmt.Errorf("jetstream: reply to a publish %q: %w", m.Data, err)
	}
	if r.Error != nil {
		return r.Error
	}
	if r.Stream == "" {
		return fmt.Errorf("jetstream: reply to a publish names no stream: %q", m.Data)
	}
	return nil
}

// Close ends the ack subscription; calls still waiting fail. The
// connection belongs to the caller.
func (p *Publisher) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for id, c := range p.calls {
		delete(p.calls, id)
		c.abort = errors.New("publisher closed before its ack")
		c.done <- struct{}{}
	}
	p.mu.Unlock()
	p.start.Do(func() {}) // no subscription after Close
	if p.sub != nil {
		if err := p.sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			return fmt.Errorf("jetstream: end the publish ack subscription: %w", err)
		}
	}
	return nil
}
