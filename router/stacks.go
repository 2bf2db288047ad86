package router

import (
	"fmt"
	"runtime/debug"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
)

// stacks runs handler calls on long-lived goroutines. Watermill starts
// a goroutine for each message, with the runtime's starting stack; the
// observe path needs more, and growing it (a copy of the stack and an
// adjustment of every frame) took a tenth of the CPU of the peer job. A
// worker's stack grows once and is kept.
//
// A call goes to a worker only when one is waiting for it, and runs in
// the caller's goroutine otherwise: no call waits for a worker, so a
// handler that waits for another message's cannot hold that one up.
type stacks struct {
	calls   chan *stackCall
	workers int
}

type stackCall struct {
	h    message.HandlerFunc
	msg  *message.Message
	out  []*message.Message
	err  error
	done chan struct{} // one value per call
}

var stackCalls = sync.Pool{New: func() any { return &stackCall{done: make(chan struct{}, 1)} }}

func newStacks(workers int) *stacks {
	s := &stacks{calls: make(chan *stackCall), workers: workers}
	for range workers {
		go s.work()
	}
	return s
}

// close stops the workers once they have finished their calls; calls
// after it run in their callers.
func (s *stacks) close() {
	go func() {
		for range s.workers {
			s.calls <- nil
		}
	}()
}

func (s *stacks) middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		c := stackCalls.Get().(*stackCall)
		c.h, c.msg = h, msg
		select {
		case s.calls <- c:
		default:
			c.h, c.msg = nil, nil
			stackCalls.Put(c)
			return h(msg)
		}
		<-c.done
		out, err := c.out, c.err
		*c = stackCall{done: c.done}
		stackCalls.Put(c)
		return out, err
	}
}

func (s *stacks) work() {
	for c := range s.calls {
		if c == nil {
			return
		}
		c.run()
		c.done <- struct{}{}
	}
}

// run calls the handler, turning a panic into the message's error as
// Watermill does in its own goroutine.
func (c *stackCall) run() {
	defer func() {
		if p := recover(); p != nil {
			c.out, c.err = nil, fmt.Errorf("panic in handler: %v\n%s", p, debug.Stack())
		}
	}()
	c.out, c.err = c.h(c.msg)
}
