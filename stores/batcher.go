package stores

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// ErrStoreClosed is returned by the calls of a store after its Close,
// and by the calls that were still waiting when it closed.
var ErrStoreClosed = errors.New("store closed")

// call is what every request in a batcher's queue carries: its caller's
// ctx, the signal that it was answered, and the error that failed it as
// a whole (the answers themselves are in the request types).
type call struct {
	ctx  context.Context
	done chan struct{}
	err  error
}

func (c *call) base() *call { return c }

// request is a pointer to a type that embeds call.
type request interface{ base() *call }

// batcher coalesces the round trips of concurrent callers: each call
// goes into a queue, and up to `workers` goroutines take what is queued
// (at most maxBatch at a time) and send it to the store in one round
// trip. Whatever arrives while a batch is on the wire goes in the next
// one, so the batches grow with the load, and nothing waits on a timer:
// a lone call on an idle store leaves at once.
//
// Workers start when calls arrive and end after the queue stayed empty
// for batcherIdle, so an idle store holds no goroutine and one that is
// never closed leaks none. A worker that waits a moment instead of
// ending at once is what keeps a busy store cheap: under a steady load
// the queue empties after almost every batch, and starting a goroutine
// per batch (and growing its stack to the client's depth) cost more
// than the round trip's own work.
type batcher[R request] struct {
	// exec sends one batch and answers each request in it, on the
	// request's own fields or its call.err. Its ctx ends at the latest
	// of the callers' deadlines, at close, and with watch when every
	// caller in the batch gave up.
	exec     func(ctx context.Context, batch []R)
	workers  int
	maxBatch int
	// watch ends a batch's ctx as soon as every caller in it gave up,
	// for clients that stop a call on cancellation (pgx). A client that
	// ignores cancellation (go-redis, which heeds at most the deadline)
	// gets the latest of the callers' deadlines alone: watching each
	// caller's ctx (context.AfterFunc)
	// cost allocations and a registration with the caller's ctx on
	// every call, for a cancellation the client ignores.
	watch bool

	closing chan struct{} // closed by close

	// wake hands a queued call to an idle worker: one token per idle
	// worker woken, so its capacity is the number of workers.
	wake chan struct{}

	mu       sync.Mutex
	queue    []R
	active   int // workers running, idle ones included
	idle     int // workers waiting on wake
	closed   bool
	inflight map[*flight]struct{}
	wg       sync.WaitGroup
}

// flight is a batch on the wire: its ctx's cancel, and the hooks that
// count its callers giving up.
type flight struct {
	cancel context.CancelFunc
	stops  []func() bool
}

func newBatcher[R request](workers, maxBatch int, watch bool, exec func(context.Context, []R)) *batcher[R] {
	return &batcher[R]{
		exec: exec, workers: workers, maxBatch: maxBatch, watch: watch,
		closing: make(chan struct{}), inflight: map[*flight]struct{}{},
		wake: make(chan struct{}, workers),
	}
}

// do queues r and waits for its answer. It returns r's call.err, or
// ctx's error as soon as ctx ends (the caller does not wait for a batch
// that is slow because of someone else), or ErrStoreClosed as soon as
// the batcher closes. A request whose caller gave up before its batch
// left is not sent. Once do returned an error, r's answers must not be
// read: the batch may still be writing them.
func (b *batcher[R]) do(ctx context.Context, r R) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := r.base()
	c.ctx, c.done = ctx, make(chan struct{})
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrStoreClosed
	}
	b.queue = append(b.queue, r)
	switch {
	case b.idle > 0:
		b.idle--
		b.wake <- struct{}{} // never blocks: a slot per idle worker
	case b.active < b.workers:
		b.active++
		b.wg.Add(1)
		go b.work()
	}
	b.mu.Unlock()
	var err error
	select {
	case <-c.done:
		return answer(ctx, c.err)
	case <-ctx.Done():
		err = ctx.Err()
	case <-b.closing:
		err = ErrStoreClosed
	}
	select {
	case <-c.done: // answered meanwhile: the answer is worth more
		return answer(ctx, c.err)
	default:
		return err
	}
}

// answer is the error a caller gets for its request's err. A batch's
// context is cancelled when every caller in it gave up, so a batch that
// failed that way answers context.Canceled; the caller gets its own
// context's error instead (DeadlineExceeded at its deadline), as it
// would had it stopped waiting a moment earlier.
func answer(ctx context.Context, err error) error {
	if err != nil && errors.Is(err, context.Canceled) {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
	}
	return err
}

// batcherIdle is how long a worker waits for calls before it ends.
const batcherIdle = time.Second

func (b *batcher[R]) work() {
	defer b.wg.Done()
	idle := time.NewTimer(batcherIdle)
	defer idle.Stop()
	for {
		batch, ctx, f, ok := b.next()
		if !ok {
			if !b.wait(idle) {
				return
			}
			continue
		}
		b.exec(ctx, batch)
		b.land(f)
		for _, r := range batch {
			close(r.base().done)
		}
		// Let the callers just answered (and whoever else is runnable)
		// queue their next calls before the next batch leaves: under
		// load that makes the batches several times larger, and each
		// batch costs this process and the server a write and a read;
		// on an idle machine it returns at once.
		b.settle()
	}
}

// settle yields while the queue grows, a few times at most.
func (b *batcher[R]) settle() {
	n := -1
	for range 4 {
		b.mu.Lock()
		m := len(b.queue)
		b.mu.Unlock()
		if m == n || m >= b.maxBatch {
			return
		}
		n = m
		runtime.Gosched()
	}
}

// wait parks a worker that found the queue empty until a call wakes it
// (true), or until batcherIdle passed or the batcher closed (false: the
// worker must end, and is no longer counted).
func (b *batcher[R]) wait(idle *time.Timer) bool {
	idle.Reset(batcherIdle)
	select {
	case <-b.wake:
		return true
	case <-idle.C:
	case <-b.closing:
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	// do may have counted on this worker after the timer fired: a token
	// sent meanwhile is for an idle worker, and this one still is.
	select {
	case <-b.wake:
		if !b.closed {
			return true
		}
	default:
		b.idle--
	}
	b.active--
	return false
}

// next takes the next batch off the queue, without the requests whose
// callers gave up (they are answered with their ctx's error), and gives
// it a ctx that ends at the latest of their deadlines, at close, or
// (watch) when all its callers gave up. ok is
// false when the worker must end.
func (b *batcher[R]) next() (batch []R, ctx context.Context, f *flight, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		n := min(len(b.queue), b.maxBatch)
		if n == 0 || b.closed {
			b.idle++ // wait decides whether the worker ends
			return nil, nil, nil, false
		}
		if n == len(b.queue) {
			batch, b.queue = b.queue, nil
		} else {
			// The rest keeps the array: appends write past its end,
			// never into the batch.
			batch, b.queue = b.queue[:n:n], b.queue[n:]
		}
		live := batch[:0]
		for _, r := range batch {
			c := r.base()
			if err := c.ctx.Err(); err != nil {
				c.err = err
				close(c.done)
				continue
			}
			live = append(live, r)
		}
		if len(live) > 0 {
			batch = live
			break
		}
	}
	f = &flight{}
	// The latest deadline too, for clients that watch deadlines but not
	// cancellation (go-redis).
	var deadline time.Time
	for _, r := range batch {
		d, ok := r.base().ctx.Deadline()
		if !ok {
			deadline = time.Time{}
			break
		}
		if d.After(deadline) {
			deadline = d
		}
	}
	if deadline.IsZero() {
		ctx, f.cancel = context.WithCancel(context.Background())
	} else {
		ctx, f.cancel = context.WithDeadline(context.Background(), deadline)
	}
	if b.watch {
		var waiting atomic.Int64
		waiting.Store(int64(len(batch)))
		gaveUp := func() {
			if waiting.Add(-1) == 0 {
				f.cancel()
			}
		}
		f.stops = make([]func() bool, len(batch))
		for i, r := range batch {
			f.stops[i] = context.AfterFunc(r.base().ctx, gaveUp)
		}
	}
	b.inflight[f] = struct{}{}
	return batch, ctx, f, true
}

// land forgets a batch that came back.
func (b *batcher[R]) land(f *flight) {
	for _, stop := range f.stops {
		stop()
	}
	f.cancel()
	b.mu.Lock()
	delete(b.inflight, f)
	b.mu.Unlock()
}

// close answers every waiting call with ErrStoreClosed, cancels the
// batches on the wire and waits for the workers to end, which takes as
// long as the store's client needs to give up on a batch (go-redis, for
// one, stops reading only at its timeouts). Calls made after it fail at
// once. It is safe to call twice.
func (b *batcher[R]) close() {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.closing)
	}
	for _, r := range b.queue {
		c := r.base()
		c.err = ErrStoreClosed
		close(c.done)
	}
	b.queue = nil
	for f := range b.inflight {
		f.cancel()
	}
	b.mu.Unlock()
	b.wg.Wait()
}
