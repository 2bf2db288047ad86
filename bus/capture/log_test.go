package capture_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// testLogger writes the subscriber's logs to the test log and fails the
// test when the reader failed (a failure the lease loop would otherwise
// hide by starting over).
func testLogger(t testing.TB) *slog.Logger {
	h := &logHandler{t: t, mu: &sync.Mutex{}}
	t.Cleanup(func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.done = true
		for _, f := range h.failures {
			t.Errorf("reader failed: %s", f)
		}
	})
	return slog.New(h)
}

type logHandler struct {
	t     testing.TB
	attrs []slog.Attr

	mu       *sync.Mutex
	done     bool
	failures []string
}

func (h *logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s", a)
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done {
		return nil
	}
	h.t.Log(b.String())
	if strings.HasPrefix(r.Message, "capture: reading failed") {
		h.failures = append(h.failures, b.String())
	}
	return nil
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr{}, h.attrs...), as...)
	return &c
}

func (h *logHandler) WithGroup(string) slog.Handler { return h }
