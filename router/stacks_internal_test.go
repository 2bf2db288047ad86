package router

import (
	"errors"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// onWorker reports whether the caller runs on one of the stacks' workers.
func onWorker() bool { return strings.Contains(string(debug.Stack()), "(*stacks).work") }

// TestStacksReturnTheHandlersResult: a call that a worker runs returns
// what the handler returned, as one that runs inline does.
func TestStacksReturnTheHandlersResult(t *testing.T) {
	s := newStacks(2)
	defer s.close()
	want := message.NewMessage("out", nil)
	var worker bool
	h := s.middleware(func(msg *message.Message) ([]*message.Message, error) {
		worker = onWorker()
		return []*message.Message{want}, errors.New("from " + msg.UUID)
	})
	onWorkers := 0
	for range 1000 {
		out, err := h(message.NewMessage("in", nil))
		if len(out) != 1 || out[0] != want || err == nil || err.Error() != "from in" {
			t.Fatalf("got %v, %v (on a worker: %v); want the handler's message and error", out, err, worker)
		}
		if !worker {
			time.Sleep(time.Millisecond) // let the workers come to wait
			continue
		}
		if onWorkers++; onWorkers == 10 {
			return
		}
	}
	t.Fatalf("%d of 1000 calls ran on a worker", onWorkers)
}

func TestStacksTurnAPanicIntoAnError(t *testing.T) {
	s := newStacks(1)
	defer s.close()
	h := s.middleware(func(*message.Message) ([]*message.Message, error) {
		if !onWorker() {
			return nil, errInline
		}
		panic("boom")
	})
	for range 100 {
		_, err := h(message.NewMessage("in", nil))
		if errors.Is(err, errInline) {
			time.Sleep(time.Millisecond) // let the worker come to wait
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "panic in handler: boom") {
			t.Fatalf("err = %v, want the panic", err)
		}
		return
	}
	t.Fatal("no call reached the worker")
}

var errInline = errors.New("ran inline")

// TestStacksNeverWaitForAWorker: with every worker busy, a call runs in
// its caller at once, so a handler waiting for another message's
// handler cannot hold it up.
func TestStacksNeverWaitForAWorker(t *testing.T) {
	s := newStacks(1)
	defer s.close()
	release := make(chan struct{})
	blocking := s.middleware(func(*message.Message) ([]*message.Message, error) {
		<-release
		return nil, nil
	})
	started := make(chan struct{})
	go func() {
		close(started)
		_, _ = blocking(message.NewMessage("first", nil))
	}()
	<-started
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = s.middleware(func(*message.Message) ([]*message.Message, error) {
			close(release) // runs although the one worker may be held by the first call
			return nil, nil
		})(message.NewMessage("second", nil))
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the second call waited for the worker held by the first")
	}
}

func TestStacksRunCallsAfterClose(t *testing.T) {
	s := newStacks(2)
	s.close()
	out, err := s.middleware(func(*message.Message) ([]*message.Message, error) { return nil, errors.New("ran") })(message.NewMessage("in", nil))
	if out != nil || err == nil || err.Error() != "ran" {
		t.Fatalf("got %v, %v; want the handler to run", out, err)
	}
}
