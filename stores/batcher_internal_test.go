package stores

import (
	"context"
	"sync"
	"testing"
	"time"
)

type testCall struct {
	call
	answer int
}

// TestBatcherWorkersStayThenEnd checks the life of the workers: they
// stay through a pause shorter than batcherIdle (a busy store starts no
// goroutine per batch), end after a longer one (an idle store holds
// none), and a call after that starts one again.
func TestBatcherWorkersStayThenEnd(t *testing.T) {
	var mu sync.Mutex
	batches := 0
	b := newBatcher(2, 8, true, func(_ context.Context, batch []*testCall) {
		mu.Lock()
		batches++
		mu.Unlock()
		for _, c := range batch {
			c.answer = 42
		}
	})
	defer b.close()
	state := func() (active, idle int) {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.active, b.idle
	}
	call := func() {
		t.Helper()
		c := &testCall{}
		if err := b.do(context.Background(), c); err != nil || c.answer != 42 {
			t.Fatalf("do = %v, answer %d; want nil, 42", err, c.answer)
		}
	}

	call()
	time.Sleep(batcherIdle / 4)
	if active, idle := state(); active != 1 || idle != 1 {
		t.Fatalf("after a call and a short pause: %d workers, %d idle; want the one worker waiting", active, idle)
	}
	call() // wakes the waiting worker rather than starting another
	time.Sleep(batcherIdle / 4)
	if active, idle := state(); active != 1 || idle != 1 {
		t.Fatalf("after a second call: %d workers, %d idle; want the same worker waiting", active, idle)
	}
	deadline := time.Now().Add(3 * batcherIdle)
	for {
		if active, idle := state(); active == 0 && idle == 0 {
			break
		}
		if time.Now().After(deadline) {
			active, idle := state()
			t.Fatalf("%v after the last call: %d workers, %d idle; want none", 3*batcherIdle, active, idle)
		}
		time.Sleep(50 * time.Millisecond)
	}
	call()
	mu.Lock()
	defer mu.Unlock()
	if batches != 3 {
		t.Fatalf("%d batches; want 3", batches)
	}
}

// TestBatcherCloseEndsIdleWorkers checks that close does not wait out
// the idle period of a waiting worker.
func TestBatcherCloseEndsIdleWorkers(t *testing.T) {
	b := newBatcher(2, 8, true, func(context.Context, []*testCall) {})
	if err := b.do(context.Background(), &testCall{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b.close()
	if d := time.Since(start); d > batcherIdle/2 {
		t.Fatalf("close took %v with an idle worker; want it at once", d)
	}
	if err := b.do(context.Background(), &testCall{}); err != ErrStoreClosed {
		t.Fatalf("do after close = %v; want ErrStoreClosed", err)
	}
}
