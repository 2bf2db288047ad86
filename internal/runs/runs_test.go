package runs_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/internal/runs"
)

// TestCloseStopsAndWaits: Close ends every run's context and returns
// only once each run has returned; Start fails after it.
func TestCloseStopsAndWaits(t *testing.T) {
	var s runs.Set
	var returned atomic.Int32
	for range 3 {
		if err := s.Start(context.Background(), func(ctx context.Context) {
			<-ctx.Done()
			time.Sleep(20 * time.Millisecond) // a run's own settling
			returned.Add(1)
		}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if n := returned.Load(); n != 3 {
		t.Fatalf("Close returned with %d of 3 runs returned", n)
	}
	if err := s.Start(context.Background(), func(context.Context) { t.Error("a run started after Close") }); !errors.Is(err, runs.ErrClosed) {
		t.Fatalf("Start after Close: %v; want ErrClosed", err)
	}
}

// TestRunEndsWithItsContext: a run stops with the context it was
// started with, and a run that returned is not waited for again.
func TestRunEndsWithItsContext(t *testing.T) {
	var s runs.Set
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	if err := s.Start(ctx, func(ctx context.Context) {
		<-ctx.Done()
		close(done)
	}); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the run did not see its context end")
	}
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return after the run had")
	}
}

// TestSleepEndsWithTheContext: Sleep waits its duration, or less when
// the context ends first, and then says so.
func TestSleepEndsWithTheContext(t *testing.T) {
	start := time.Now()
	if err := runs.Sleep(context.Background(), 30*time.Millisecond); err != nil {
		t.Fatalf("Sleep(30ms): %v", err)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Fatalf("Sleep(30ms) returned after %s", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start = time.Now()
	if err := runs.Sleep(ctx, time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep on an ended context: %v; want context.Canceled", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Sleep on an ended context took %s", d)
	}
}
