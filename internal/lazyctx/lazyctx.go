package lazyctx

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Ctx is a cancelable context whose context.WithCancel or
// context.WithDeadline is made on the first call to Done. Until then
// its deadline and Err come from the clock and the parent, and Cancel
// only records that it was called.
type Ctx struct {
	parent      context.Context
	deadline    time.Time
	hasDeadline bool

	armed atomic.Pointer[armedCtx] // set once, by the first Done
	mu    sync.Mutex               // serializes arming and cancel
	err   error                    // set by cancel when it came first
}

type armedCtx struct {
	ctx    context.Context
	cancel context.CancelFunc
}

// WithCancel is context.WithCancel(parent) made on demand; Cancel is its
// CancelFunc. It returns no CancelFunc of its own: the method value
// would be one more allocation per message.
func WithCancel(parent context.Context) *Ctx {
	return &Ctx{parent: parent}
}

// WithTimeout is context.WithTimeout(parent, d) made on demand; Cancel
// is its CancelFunc.
func WithTimeout(parent context.Context, d time.Duration) *Ctx {
	return &Ctx{parent: parent, deadline: time.Now().Add(d), hasDeadline: true}
}

func (c *Ctx) Deadline() (time.Time, bool) {
	d, ok := c.parent.Deadline()
	if c.hasDeadline && (!ok || c.deadline.Before(d)) {
		return c.deadline, true
	}
	return d, ok
}

func (c *Ctx) Done() <-chan struct{} {
	if a := c.armed.Load(); a != nil {
		return a.ctx.Done()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	a := c.armed.Load()
	if a == nil {
		a = &armedCtx{}
		if c.hasDeadline {
			a.ctx, a.cancel = context.WithDeadline(c.parent, c.deadline)
		} else {
			a.ctx, a.cancel = context.WithCancel(c.parent)
		}
		if c.err != nil {
			a.cancel() // cancelled before anyone waited
		}
		c.armed.Store(a)
	}
	return a.ctx.Done()
}

func (c *Ctx) Err() error {
	if a := c.armed.Load(); a != nil {
		return a.ctx.Err()
	}
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return err
	}
	return c.expired()
}

// expired is the error the context would have now, unarmed: the
// parent's, or DeadlineExceeded once its deadline has passed.
func (c *Ctx) expired() error {
	if err := c.parent.Err(); err != nil {
		return err
	}
	if c.hasDeadline && !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

func (c *Ctx) Value(key any) any {
	if a := c.armed.Load(); a != nil {
		return a.ctx.Value(key)
	}
	return c.parent.Value(key)
}

// Cancel cancels the context, as a context.CancelFunc does: twice is
// harmless.
func (c *Ctx) Cancel() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if a := c.armed.Load(); a != nil {
		a.cancel()
		return
	}
	if c.err == nil {
		c.err = c.expired()
		if c.err == nil {
			c.err = context.Canceled
		}
	}
}

// String names the context for logs, as the context package's do.
func (c *Ctx) String() string {
	if c.hasDeadline {
		return "lazyctx.WithTimeout(" + c.deadline.String() + ")"
	}
	return "lazyctx.WithCancel"
}
