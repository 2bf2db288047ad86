package runs

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrClosed is Start's answer once the Set is closed.
var ErrClosed = errors.New("subscriber closed")

// Set holds the runs started and not yet returned. The zero value is
// ready to use.
type Set struct {
	mu     sync.Mutex
	closed bool
	runs   map[*run]struct{}
}

type run struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// Start calls f in a goroutine of its own, with a context that ends
// with ctx or at Close. After Close it starts nothing and returns
// ErrClosed.
func (s *Set) Start(ctx context.Context, f func(ctx context.Context)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &run{cancel: cancel, done: make(chan struct{})}
	if s.runs == nil {
		s.runs = map[*run]struct{}{}
	}
	s.runs[r] = struct{}{}
	go func() {
		defer close(r.done)
		defer cancel()
		f(ctx)
		s.mu.Lock()
		delete(s.runs, r)
		s.mu.Unlock()
	}()
	return nil
}

// Close ends the context of every run and waits for each to return.
func (s *Set) Close() {
	s.mu.Lock()
	s.closed = true
	runs := make([]*run, 0, len(s.runs))
	for r := range s.runs {
		runs = append(runs, r)
	}
	s.mu.Unlock()
	for _, r := range runs {
		r.cancel()
	}
	for _, r := range runs {
		<-r.done
	}
}

// Sleep waits d or until ctx ends, whichever comes first, and returns
// ctx.Err() in the second case. middleware.Sleep, the retries' wait, is
// this one.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
