package jetstream

import (
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Acks are coalesced: each handler settles its message on its own, so
// that published one by one, the acks of a busy subscription left in a
// write of their own each (nats.go's flusher wakes on the first and
// writes what is buffered by then: one or two acks). The server then
// read them one syscall each, which cost it more CPU than delivering the
// messages. Held for ackDelay, or until ackBatch are queued, they leave
// together. An ack held here and lost with the process is as an ack lost
// on the wire: the message is redelivered after ack_wait and the dedup
// ledger skips it.
const (
	ackDelay = time.Millisecond
	ackBatch = 128
)

// acker publishes the acks of one consume loop, coalesced. It outlives
// the loop's pullers (a restart at the ack floor replaces them while
// their messages still settle); close sends what is queued, and acks
// after it go out at once. Safe for concurrent use.
type acker struct {
	nc     *nats.Conn
	logger *slog.Logger
	// flushing is held through a flush, so that close returns after the
	// acks of a flush in progress were written too.
	flushing sync.Mutex

	mu      sync.Mutex
	queue   []string // reply subjects
	spare   []string
	pending bool // a flush is scheduled
	closed  bool
	timer   *time.Timer
}

func newAcker(nc *nats.Conn, logger *slog.Logger) *acker {
	a := &acker{nc: nc, logger: logger}
	a.timer = time.AfterFunc(time.Hour, a.flush)
	a.timer.Stop()
	return a
}

// ack queues the ack of the message whose reply subject is reply. The
// error is the connection's: a publish that fails leaves the message to
// be redelivered after ack_wait.
func (a *acker) ack(reply string) error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return a.nc.Publish(reply, ackBody)
	}
	a.queue = append(a.queue, reply)
	switch {
	case len(a.queue) >= ackBatch:
		a.mu.Unlock()
		a.flush()
		return nil
	case !a.pending:
		a.pending = true
		a.timer.Reset(ackDelay)
	}
	a.mu.Unlock()
	return nil
}

// flush publishes the queued acks.
func (a *acker) flush() {
	a.flushing.Lock()
	defer a.flushing.Unlock()
	a.mu.Lock()
	q := a.queue
	a.queue, a.spare = a.spare[:0], nil
	a.pending = false
	a.mu.Unlock()
	failed := 0
	var err error
	for i, reply := range q {
		if e := a.nc.Publish(reply, ackBody); e != nil {
			failed, err = failed+1, e
		}
		q[i] = ""
	}
	if failed > 0 {
		// The connection is down or closed: the messages are redelivered
		// after ack_wait, as after an ack lost on the wire.
		a.logger.Warn("jetstream: acks failed; the messages will be redelivered", "acks", failed, "err", err)
	}
	a.mu.Lock()
	if a.spare == nil {
		a.spare = q[:0]
	}
	a.mu.Unlock()
}

// close sends the queued acks; later acks are sent at once.
func (a *acker) close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.timer.Stop()
	a.flush()
}
