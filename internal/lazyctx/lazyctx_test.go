package lazyctx_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/millrace/millrace/internal/lazyctx"
)

type ctxKey struct{}

// closes reports whether ch is closed within 5 seconds.
func closes(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

func TestWithTimeoutDoneClosesAtTheDeadline(t *testing.T) {
	ctx := lazyctx.WithTimeout(context.Background(), 20*time.Millisecond)
	cancel := ctx.Cancel
	defer cancel()
	if err := ctx.Err(); err != nil {
		t.Fatalf("Err before the deadline = %v, want nil", err)
	}
	if !closes(ctx.Done()) {
		t.Fatal("Done did not close after the deadline")
	}
	if err := ctx.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Err = %v, want DeadlineExceeded", err)
	}
}

func TestWithTimeoutErrWithoutDone(t *testing.T) {
	ctx := lazyctx.WithTimeout(context.Background(), 10*time.Millisecond)
	cancel := ctx.Cancel
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

// constructors are the two ways to make a lazy context, for the tests
// that hold for both.
var constructors = []struct {
	name string
	with func(context.Context) (context.Context, context.CancelFunc)
}{
	{"WithCancel", func(p context.Context) (context.Context, context.CancelFunc) {
		c := lazyctx.WithCancel(p)
		return c, c.Cancel
	}},
	{"WithTimeout", func(p context.Context) (context.Context, context.CancelFunc) {
		c := lazyctx.WithTimeout(p, time.Hour)
		return c, c.Cancel
	}},
}

func TestFollowsItsParent(t *testing.T) {
	for _, c := range constructors {
		for _, armFirst := range []bool{false, true} {
			parent, cancelParent := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
			ctx, cancel := c.with(parent)
			if got := ctx.Value(ctxKey{}); got != "v" {
				t.Fatalf("%s: Value = %v, want the parent's", c.name, got)
			}
			var done <-chan struct{}
			if armFirst {
				done = ctx.Done()
			}
			cancelParent()
			if err := ctx.Err(); !errors.Is(err, context.Canceled) {
				t.Fatalf("%s, armed=%v: Err after the parent's cancel = %v, want Canceled", c.name, armFirst, err)
			}
			if done == nil {
				done = ctx.Done()
			}
			if !closes(done) {
				t.Fatalf("%s, armed=%v: Done did not close with the parent", c.name, armFirst)
			}
			if got := ctx.Value(ctxKey{}); got != "v" {
				t.Fatalf("%s, armed=%v: Value after arming = %v, want the parent's", c.name, armFirst, got)
			}
			cancel()
		}
	}
}

func TestCancel(t *testing.T) {
	for _, c := range constructors {
		for _, armFirst := range []bool{false, true} {
			ctx, cancel := c.with(context.Background())
			if armFirst {
				_ = ctx.Done()
			}
			cancel()
			cancel() // twice is harmless
			if err := ctx.Err(); !errors.Is(err, context.Canceled) {
				t.Fatalf("%s, armed=%v: Err after cancel = %v, want Canceled", c.name, armFirst, err)
			}
			if !closes(ctx.Done()) {
				t.Fatalf("%s, armed=%v: Done not closed after cancel", c.name, armFirst)
			}
		}
	}
}

func TestWithTimeoutDeadline(t *testing.T) {
	ctx := lazyctx.WithTimeout(context.Background(), time.Hour)
	cancel := ctx.Cancel
	defer cancel()
	d, ok := ctx.Deadline()
	if !ok || time.Until(d) < 59*time.Minute || time.Until(d) > time.Hour {
		t.Fatalf("Deadline = %v, %v; want about an hour from now", d, ok)
	}
	parent, cancelParent := context.WithTimeout(context.Background(), time.Minute)
	defer cancelParent()
	ctx = lazyctx.WithTimeout(parent, time.Hour)
	cancel = ctx.Cancel
	defer cancel()
	if d, _ := ctx.Deadline(); time.Until(d) > time.Minute {
		t.Fatalf("Deadline = %v, want the parent's, which is earlier", d)
	}
}

// A context derived from it (what an HTTP client or a driver makes)
// is cancelled at the deadline.
func TestWithTimeoutDerivedContexts(t *testing.T) {
	ctx := lazyctx.WithTimeout(context.Background(), 20*time.Millisecond)
	cancel := ctx.Cancel
	defer cancel()
	child, cancelChild := context.WithCancel(ctx)
	defer cancelChild()
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { close(fired) })
	defer stop()
	for _, ch := range []<-chan struct{}{child.Done(), fired} {
		if !closes(ch) {
			t.Fatal("a derived context was not cancelled at the deadline")
		}
	}
	if err := child.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("child Err = %v, want DeadlineExceeded", err)
	}
}

// BenchmarkActionContext compares the context of an action that never
// waits on it, made by lazyctx.WithTimeout and by context.WithTimeout.
func BenchmarkActionContext(b *testing.B) {
	parent, cancelParent := context.WithCancel(context.Background())
	defer cancelParent()
	b.Run("lazyctx.WithTimeout", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ctx := lazyctx.WithTimeout(parent, time.Minute)
			_ = ctx.Err()
			ctx.Cancel()
		}
	})
	b.Run("context.WithTimeout", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ctx, cancel := context.WithTimeout(parent, time.Minute)
			_ = ctx.Err()
			cancel()
		}
	})
}

func TestWithCancel(t *testing.T) {
	ctx := lazyctx.WithCancel(context.Background())
	cancel := ctx.Cancel
	if _, ok := ctx.Deadline(); ok {
		t.Error("a WithCancel context of Background has a deadline")
	}
	if err := ctx.Err(); err != nil {
		t.Fatalf("Err = %v, want nil", err)
	}
	done := ctx.Done()
	select {
	case <-done:
		t.Fatal("Done closed before cancel")
	default:
	}
	cancel()
	if !closes(done) {
		t.Fatal("Done not closed by cancel")
	}
	if err := ctx.Err(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Err = %v, want Canceled", err)
	}
	parent, cancelParent := context.WithTimeout(context.Background(), time.Minute)
	defer cancelParent()
	ctx = lazyctx.WithCancel(parent)
	cancel = ctx.Cancel
	defer cancel()
	if d, ok := ctx.Deadline(); !ok || time.Until(d) > time.Minute {
		t.Errorf("Deadline = %v, %v; want the parent's", d, ok)
	}
}
