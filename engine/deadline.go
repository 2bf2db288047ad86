package engine

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// deadlineCtx is context.WithDeadline with its timer armed on the first
// call to Done. An action that never waits on its context (an in-process
// handler, a no-op) then costs no timer and no registration with its
// parent: with context.WithTimeout per action they were 5 % of the CPU
// of the peer job. An action that waits (an HTTP call, a query) gets,
// on its first Done, the context.WithDeadline it had before.
//
// Err does not need the timer: it reads the parent and the clock, so a
// handler that polls Err sees the deadline pass as it would with
// WithDeadline. context.Cause before the first Done reads the parent's
// cause, as nothing has been cancelled yet.
type deadlineCtx struct {
	parent   context.Context
	deadline time.Time

	armed atomic.Pointer[armedCtx] // set once, by the first Done
	mu    sync.Mutex               // serializes arming and cancel
	err   error                    // set by cancel when it came first
}

type armedCtx struct {
	ctx    context.Context
	cancel context.CancelFunc
}

// withTimeout is context.WithTimeout(parent, d) with the timer armed on
// demand.
func withTimeout(parent context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	c := &deadlineCtx{parent: parent, deadline: time.Now().Add(d)}
	return c, c.cancel
}

func (c *deadlineCtx) Deadline() (time.Time, bool) {
	if d, ok := c.parent.Deadline(); ok && d.Before(c.deadline) {
		return d, true
	}
	return c.deadline, true
}

func (c *deadlineCtx) Done() <-chan struct{} {
	if a := c.armed.Load(); a != nil {
		return a.ctx.Done()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	a := c.armed.Load()
	if a == nil {
		a = &armedCtx{}
		a.ctx, a.cancel = context.WithDeadline(c.parent, c.deadline)
		if c.err != nil {
			a.cancel() // cancelled before anyone waited
		}
		c.armed.Store(a)
	}
	return a.ctx.Done()
}

func (c *deadlineCtx) Err() error {
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
// parent's, or DeadlineExceeded once the deadline has passed.
func (c *deadlineCtx) expired() error {
	if err := c.parent.Err(); err != nil {
		return err
	}
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

func (c *deadlineCtx) Value(key any) any {
	if a := c.armed.Load(); a != nil {
		return a.ctx.Value(key)
	}
	return c.parent.Value(key)
}

func (c *deadlineCtx) cancel() {
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

// String names the context as context.WithDeadline's does, for logs.
func (c *deadlineCtx) String() string {
	return "engine.withTimeout(" + c.deadline.String() + ")"
}
