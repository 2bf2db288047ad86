package actiontest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

// recorder is a testing.TB that keeps the failures reported to it instead
// of failing the test. Cleanup and the rest go to the real test.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	failed []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = append(r.failed, fmt.Sprintf(format, args...))
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	runtime.Goexit()
}

// record runs f with a recorder, as its own goroutine so that Fatalf can
// stop it, and returns the failures f reported.
func record(t *testing.T, f func(tb testing.TB)) []string {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

// toy is an action type whose mode picks a way to behave, right or wrong.
type toy struct {
	Mode string `koanf:"mode"`
}

var toyModes = map[string]func(release <-chan struct{}) handlers.Action{
	// good waits for its context, as a network call would, and returns
	// its error; its Close is idempotent.
	"good": func(<-chan struct{}) handlers.Action {
		return &toyAction{exec: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}
	},
	// ignores_ctx waits for the end of the test whatever its context.
	"ignores_ctx": func(release <-chan struct{}) handlers.Action {
		return &toyAction{exec: func(context.Context) error { <-release; return nil }}
	},
	// permanent_on_cancel classifies the end of its context as permanent.
	"permanent_on_cancel": func(<-chan struct{}) handlers.Action {
		return &toyAction{exec: func(ctx context.Context) error { <-ctx.Done(); return handlers.Permanent(ctx.Err()) }}
	},
	// nil_at_deadline reports success when its context ends.
	"nil_at_deadline": func(<-chan struct{}) handlers.Action {
		return &toyAction{exec: func(ctx context.Context) error { <-ctx.Done(); return nil }}
	},
	// close_once fails the second Close.
	"close_once": func(<-chan struct{}) handlers.Action {
		return &toyAction{exec: func(ctx context.Context) error { return ctx.Err() }, closeOnce: true}
	},
	// panics panics in Execute.
	"panics": func(<-chan struct{}) handlers.Action {
		return &toyAction{exec: func(context.Context) error { panic("nil map write") }}
	},
}

func (c toy) Validate() error {
	if _, ok := toyModes[c.Mode]; !ok {
		return config.Errorf("mode", "unknown mode %q", c.Mode)
	}
	return nil
}

type toyAction struct {
	exec      func(ctx context.Context) error
	closeOnce bool
	mu        sync.Mutex
	closed    bool
}

func (a *toyAction) Execute(ctx context.Context, _ *event.Event) error { return a.exec(ctx) }

func (a *toyAction) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed && a.closeOnce {
		return errors.New("already closed")
	}
	a.closed = true
	return nil
}

// toyRegistry registers "toy"; actions that ignore their context run
// until the test ends.
func toyRegistry(t *testing.T) *handlers.Registry {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	reg := handlers.NewRegistry()
	handlers.MustRegister(reg, "toy", func(_ context.Context, c toy, _ handlers.Deps) (handlers.Action, error) {
		return toyModes[c.Mode](release), nil
	})
	return reg
}

func toyConfig(mode string) config.Action {
	if mode == "" {
		return nil
	}
	return config.Action{"type": "toy", "mode": mode}
}

// TestCheck shows that each check passes a good action and reports a bad
// one, naming the check.
func TestCheck(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, mode, blocking string
		// want maps each check that must fail to a part of its message.
		want map[string]string
	}{
		{"good", "good", "good", nil},
		{"bad config", "nope", "", map[string]string{"builds": Path + `.mode: unknown mode "nope"`}},
		{"ignores a cancelled context", "ignores_ctx", "", map[string]string{"cancelled context": "did not return within 1s"}},
		{"permanent on cancel", "permanent_on_cancel", "", map[string]string{"cancelled context": "dead-letters"}},
		{"panics", "panics", "", map[string]string{"cancelled context": "panic: nil map write"}},
		{"close fails the second time", "close_once", "", map[string]string{"close twice": "a second Close = already closed"}},
		{"ignores a deadline", "good", "ignores_ctx", map[string]string{"deadline": "did not return within 2s"}},
		{"permanent at the deadline", "good", "permanent_on_cancel", map[string]string{"deadline": "want a transient error: a retry may succeed"}},
		{"nil at the deadline", "good", "nil_at_deadline", map[string]string{"deadline": "= nil"}},
		{"bad blocking config", "good", "nope", map[string]string{"deadline": "Case.Blocking"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := Case{Registry: toyRegistry(t), Config: toyConfig(tc.mode), Blocking: toyConfig(tc.blocking)}
			failed := record(t, func(tb testing.TB) { Check(tb, c) })
			t.Logf("Check reported %q", failed)
			got := map[string]string{}
			for _, msg := range failed {
				check, _, _ := strings.Cut(strings.TrimPrefix(msg, "actiontest: "), ":")
				got[check] = msg
			}
			for check, part := range tc.want {
				if !strings.Contains(got[check], part) {
					t.Errorf("Check reported %q; want a %q failure holding %q", failed, check, part)
				}
			}
			for check := range got {
				if _, ok := tc.want[check]; !ok {
					t.Errorf("Check reported %q; want no %q failure", failed, check)
				}
			}
		})
	}
}

// TestPanicCheck shows the panic check failing when the function that
// runs actions lets a panic through as a transient error or as success.
func TestPanicCheck(t *testing.T) {
	t.Parallel()
	if p := panics(handlers.Execute, Event()); p != "" {
		t.Errorf("panics(handlers.Execute) = %q; want no problem", p)
	}
	for name, run := range map[string]func(context.Context, handlers.Action, *event.Event) error{
		"transient": func(ctx context.Context, a handlers.Action, ev *event.Event) (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("panic: %v", r)
				}
			}()
			return a.Execute(ctx, ev)
		},
		"swallowed": func(ctx context.Context, a handlers.Action, ev *event.Event) (err error) {
			defer func() { _ = recover() }()
			return a.Execute(ctx, ev)
		},
	} {
		if p := panics(run, Event()); !strings.Contains(p, "want a permanent error naming the panic") {
			t.Errorf("panics(%s) = %q; want the problem reported", name, p)
		}
	}
}

func TestBuild(t *testing.T) {
	t.Parallel()
	reg := toyRegistry(t)
	a := Build(t, Case{Registry: reg, Config: toyConfig("good")})
	if _, ok := a.(*toyAction); !ok {
		t.Fatalf("Build = %T; want the toy action", a)
	}
	failed := record(t, func(tb testing.TB) {
		Build(tb, Case{Registry: reg, Config: config.Action{"type": "toy", "mode": "good", "colour": "red"}})
		tb.Errorf("not reached: Build must stop the test")
	})
	if len(failed) != 1 || !strings.Contains(failed[0], Path+".colour") {
		t.Errorf("Build of a section with an unknown key reported %q; want one failure naming %s.colour", failed, Path)
	}
}

func TestExpect(t *testing.T) {
	t.Parallel()
	transient := errors.New("connection reset")
	permanent := handlers.Permanent(errors.New("422 Unprocessable Entity"))
	retry := fmt.Errorf("post: %w", &handlers.RetryAfterError{Err: transient, After: 30 * time.Second})
	for _, tc := range []struct {
		name   string
		expect func(testing.TB)
		fails  bool
	}{
		{"permanent/permanent", func(tb testing.TB) { ExpectPermanent(tb, permanent) }, false},
		{"permanent/transient", func(tb testing.TB) { ExpectPermanent(tb, transient) }, true},
		{"permanent/nil", func(tb testing.TB) { ExpectPermanent(tb, nil) }, true},
		{"transient/transient", func(tb testing.TB) { ExpectTransient(tb, transient) }, false},
		{"transient/permanent", func(tb testing.TB) { ExpectTransient(tb, permanent) }, true},
		{"transient/nil", func(tb testing.TB) { ExpectTransient(tb, nil) }, true},
		{"retry after/same", func(tb testing.TB) { ExpectRetryAfter(tb, retry, 30*time.Second) }, false},
		{"retry after/other", func(tb testing.TB) { ExpectRetryAfter(tb, retry, time.Minute) }, true},
		{"retry after/none", func(tb testing.TB) { ExpectRetryAfter(tb, transient, 30*time.Second) }, true},
		{"retry after/permanent", func(tb testing.TB) { ExpectRetryAfter(tb, handlers.Permanent(retry), 30*time.Second) }, true},
	} {
		if failed := record(t, tc.expect); (len(failed) > 0) != tc.fails {
			t.Errorf("%s: reported %q; want a failure: %v", tc.name, failed, tc.fails)
		}
	}
}

func TestSilentServer(t *testing.T) {
	t.Parallel()
	srv := SilentServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/hook", strings.NewReader(`{"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		_ = resp.Body.Close()
		t.Fatalf("the silent server answered %s", resp.Status)
	}
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) < 150*time.Millisecond {
		t.Errorf("Do = %v after %s; want the deadline, 200ms, to end the wait", err, time.Since(start))
	}

	// A raw connection is accepted and gets nothing back.
	c, err := net.Dial("tcp", srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Read = %d, %v; want nothing until the deadline", n, err)
	}
}
