package actiontest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

// Path is the key path the section of a Case is decoded at, as if it
// were the first action of an observer named "actiontest".
const Path = "observers.actiontest.actions[0]"

// The bounds Check holds an action to.
const (
	// CancelBound is how soon Execute must return on a context that is
	// already cancelled.
	CancelBound = time.Second
	// Deadline is the deadline Execute gets under Case.Blocking.
	Deadline = 200 * time.Millisecond
	// DeadlineBound is how soon Execute must return under Deadline.
	DeadlineBound = 2 * time.Second
)

// Case is one action under test.
type Case struct {
	// Registry holds the action's type. Required.
	Registry *handlers.Registry
	// Config is the action's section as millrace.toml would give it,
	// "type" included.
	Config config.Action
	// Deps is passed to the build function. ActionHash defaults to the
	// section's hash, as at start-up.
	Deps handlers.Deps
	// Event is what Check passes to Execute. Default Event().
	Event *event.Event
	// Blocking, when set, is a section under which Execute would block
	// forever if it ignored its context: one pointing at a SilentServer,
	// say. Check then expects Execute to give up at its deadline.
	Blocking config.Action
}

// Build decodes, validates and builds c.Config as millrace does at
// start-up, and closes the action when the test ends. A config or build
// error fails the test with the key path of the bad field.
func Build(t testing.TB, c Case) handlers.Action {
	t.Helper()
	a, err := build(c, c.Config)
	if err != nil {
		t.Fatalf("actiontest: %v", err)
	}
	if cl, ok := a.(io.Closer); ok {
		t.Cleanup(func() {
			if err := cl.Close(); err != nil {
				t.Errorf("actiontest: Close: %v", err)
			}
		})
	}
	return a
}

func build(c Case, raw config.Action) (handlers.Action, error) {
	if c.Registry == nil {
		return nil, errors.New("Case.Registry is nil")
	}
	spec, err := c.Registry.Decode(Path, raw)
	if err != nil {
		return nil, fmt.Errorf("the section does not decode:\n%w", err)
	}
	deps := c.Deps
	if deps.ActionHash == "" {
		deps.ActionHash = spec.Hash
	}
	a, err := c.Registry.Build(context.Background(), spec, deps)
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	return a, nil
}

// Check runs the conformance checks of the package doc on c, and reports
// each failure as a test error naming the check. Each check returns the
// problem it found, or "". The action is closed
// before Check returns.
//
// An Execute that ignores its context is abandoned, still running, when
// its bound is over; the test fails and the goroutine ends with the test
// binary.
func Check(t testing.TB, c Case) {
	t.Helper()
	ev := c.Event
	if ev == nil {
		ev = Event()
	}
	a, err := build(c, c.Config)
	if err != nil {
		t.Errorf("actiontest: builds: %v", err)
		return
	}
	report := func(check, problem string) {
		t.Helper()
		if problem != "" {
			t.Errorf("actiontest: %s: %s", check, problem)
		}
	}
	report("cancelled context", cancelled(a, ev))
	if c.Blocking != nil {
		report("deadline", deadline(c, ev))
	}
	report("close twice", closeTwice(a))
	report("panic", panics(handlers.Execute, ev))
}

// cancelled runs Execute on a context that is already cancelled.
func cancelled(a handlers.Action, ev *event.Event) string {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ok, err := within(CancelBound, func() error { return handlers.Execute(ctx, a, ev) })
	switch {
	case !ok:
		return fmt.Sprintf("Execute did not return within %s of a cancelled context; it must honour ctx", CancelBound)
	case handlers.IsPermanent(err):
		return fmt.Sprintf("Execute = %v; want nil or a transient error: a permanent one dead-letters the event at shutdown", err)
	}
	return ""
}

// deadline builds c.Blocking and runs Execute under Deadline.
func deadline(c Case, ev *event.Event) string {
	a, err := build(c, c.Blocking)
	if err != nil {
		return fmt.Sprintf("Case.Blocking: %v", err)
	}
	defer closeAction(a)
	ctx, cancel := context.WithTimeout(context.Background(), Deadline)
	defer cancel()
	ok, err := within(DeadlineBound, func() error { return handlers.Execute(ctx, a, ev) })
	switch {
	case !ok:
		return fmt.Sprintf("Execute under a %s deadline did not return within %s; it must honour ctx", Deadline, DeadlineBound)
	case err == nil:
		return fmt.Sprintf("Execute under a %s deadline = nil; want a transient error (did Case.Blocking block?)", Deadline)
	case handlers.IsPermanent(err):
		return fmt.Sprintf("Execute under a %s deadline = %v; want a transient error: a retry may succeed", Deadline, err)
	}
	return ""
}

// closeTwice closes a twice, when it has a Close.
func closeTwice(a handlers.Action) string {
	cl, ok := a.(io.Closer)
	if !ok {
		return ""
	}
	if err := cl.Close(); err != nil {
		return fmt.Sprintf("Close = %v; want nil", err)
	}
	if err := cl.Close(); err != nil {
		return fmt.Sprintf("a second Close = %v; want nil: Close must be idempotent", err)
	}
	return ""
}

// panics runs an action that panics through run, the function millrace
// executes every action with (handlers.Execute; the kit's tests pass
// broken ones). The other checks go through it too, so a panic in the
// action under test shows there as a permanent error.
func panics(run func(context.Context, handlers.Action, *event.Event) error, ev *event.Event) string {
	boom := handlers.ActionFunc(func(context.Context, *event.Event) error { panic("actiontest: boom") })
	err := run(context.Background(), boom, ev)
	if !handlers.IsPermanent(err) || !strings.Contains(err.Error(), "actiontest: boom") {
		return fmt.Sprintf("a panic in Execute gave %v; want a permanent error naming the panic", err)
	}
	return ""
}

// within runs f and waits at most d for it. ok is false if f is still
// running; it is then left to finish on its own.
func within(d time.Duration, f func() error) (ok bool, err error) {
	done := make(chan error, 1)
	go func() { done <- f() }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		return true, err
	case <-timer.C:
		return false, nil
	}
}

func closeAction(a handlers.Action) {
	if cl, ok := a.(io.Closer); ok {
		_ = cl.Close()
	}
}

// Event returns a sample event: an INSERT of Order 42 with a fresh id,
// data {"status": "new", "total": 10}.
func Event() *event.Event {
	return &event.Event{
		ID:        uuid.NewString(),
		Type:      event.Insert,
		Entity:    "Order",
		EntityID:  "42",
		Data:      map[string]any{"status": "new", "total": 10.0},
		Timestamp: time.Now().UTC(),
	}
}
