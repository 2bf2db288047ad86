package engine

import (
	"context"
	"errors"
	"testing"
	"time"
)

type ctxKey struct{}

func TestWithTimeoutDoneClosesAtTheDeadline(t *testing.T) {
	ctx, cancel := withTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := ctx.Err(); err != nil {
		t.Fatalf("Err before the deadline = %v, want nil", err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done did not close after the deadline")
	}
	if err := ctx.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Err = %v, want DeadlineExceeded", err)
	}
}

func TestWithTimeoutErrWithoutDone(t *testing.T) {
	ctx, cancel := withTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	time.Sleep(20 * time.Millisecond)
	if err := ctx.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Err after the deadline, Done never called = %v, want DeadlineExceeded", err)
	}
	// Arming after the deadline gives a closed channel.
	select {
	case <-ctx.Done():
	default:
		t.Fatal("Done armed after the deadline is not closed")
	}
}

func TestWithTimeoutFollowsItsParent(t *testing.T) {
	for _, armFirst := range []bool{false, true} {
		parent, cancelParent := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
		ctx, cancel := withTimeout(parent, time.Hour)
		if got := ctx.Value(ctxKey{}); got != "v" {
			t.Fatalf("Value = %v, want the parent's", got)
		}
		var done <-chan struct{}
		if armFirst {
			done = ctx.Done()
		}
		cancelParent()
		if err := ctx.Err(); !errors.Is(err, context.Canceled) {
			t.Fatalf("armed=%v: Err after the parent's cancel = %v, want Canceled", armFirst, err)
		}
		if done == nil {
			done = ctx.Done()
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("armed=%v: Done did not close with the parent", armFirst)
		}
		if got := ctx.Value(ctxKey{}); got != "v" {
			t.Fatalf("armed=%v: Value after arming = %v, want the parent's", armFirst, got)
		}
		cancel()
	}
}

func TestWithTimeoutCancel(t *testing.T) {
	for _, armFirst := range []bool{false, true} {
		ctx, cancel := withTimeout(context.Background(), time.Hour)
		if armFirst {
			_ = ctx.Done()
		}
		cancel()
		cancel() // twice is harmless
		if err := ctx.Err(); !errors.Is(err, context.Canceled) {
			t.Fatalf("armed=%v: Err after cancel = %v, want Canceled", armFirst, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("armed=%v: Done not closed after cancel", armFirst)
		}
	}
}

func TestWithTimeoutDeadline(t *testing.T) {
	ctx, cancel := withTimeout(context.Background(), time.Hour)
	defer cancel()
	d, ok := ctx.Deadline()
	if !ok || time.Until(d) < 59*time.Minute || time.Until(d) > time.Hour {
		t.Fatalf("Deadline = %v, %v; want about an hour from now", d, ok)
	}
	parent, cancelParent := context.WithTimeout(context.Background(), time.Minute)
	defer cancelParent()
	ctx, cancel = withTimeout(parent, time.Hour)
	defer cancel()
	if d, _ := ctx.Deadline(); time.Until(d) > time.Minute {
		t.Fatalf("Deadline = %v, want the parent's, which is earlier", d)
	}
}

// A context derived from it (what an HTTP client or a driver makes)
// is cancelled at the deadline.
func TestWithTimeoutDerivedContexts(t *testing.T) {
	ctx, cancel := withTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	child, cancelChild := context.WithCancel(ctx)
	defer cancelChild()
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { close(fired) })
	defer stop()
	for _, ch := range []<-chan struct{}{child.Done(), fired} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal("a derived context was not cancelled at the deadline")
		}
	}
	if err := child.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("child Err = %v, want DeadlineExceeded", err)
	}
}

// BenchmarkActionContext compares the context of an action that never
// waits on it, made by withTimeout and by context.WithTimeout.
func BenchmarkActionContext(b *testing.B) {
	parent, cancelParent := context.WithCancel(context.Background())
	defer cancelParent()
	for _, bc := range []struct {
		name string
		with func(context.Context, time.Duration) (context.Context, context.CancelFunc)
	}{{"withTimeout", withTimeout}, {"context.WithTimeout", context.WithTimeout}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ctx, cancel := bc.with(parent, time.Minute)
				_ = ctx.Err()
				cancel()
			}
		})
	}
}
