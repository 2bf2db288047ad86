package middleware_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/stores"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/middleware"
)

var errPermanentForTest = errors.New("4xx")

func TestBreakerOpensWaitsAndCloses(t *testing.T) {
	t.Parallel()
	b := middleware.NewBreakers(middleware.BreakerConfig{Failures: 3, OpenFor: 300 * time.Millisecond},
		func(err error) bool { return !errors.Is(err, errPermanentForTest) })
	fail := errors.New("503")
	calls := 0
	call := func(err error) func() error { return func() error { calls++; return err } }

	// Permanent errors show the endpoint is up: they do not open it.
	for range 5 {
		_ = b.Do("hook", call(errPermanentForTest))
	}
	if s := b.State("hook"); s != 0 {
		t.Fatalf("state after permanent errors = %d; want 0 (closed)", s)
	}
	for range 3 {
		if err := b.Do("hook", call(fail)); !errors.Is(err, fail) {
			t.Fatalf("Do = %v; want the call's error", err)
		}
	}
	if s := b.State("hook"); s != 2 {
		t.Fatalf("state after 3 failures = %d; want 2 (open)", s)
	}
	before := calls
	err := b.Do("hook", call(nil))
	if !errors.Is(err, middleware.ErrBreakerOpen) || calls != before {
		t.Fatalf("Do while open = %v (calls %d→%d); want ErrBreakerOpen without a call", err, before, calls)
	}
	// Other endpoints are not affected.
	if err := b.Do("other", call(nil)); err != nil {
		t.Fatalf("Do on another key: %v", err)
	}
	// Context cancellation says nothing about the endpoint.
	if s := b.State("other"); s != 0 {
		t.Fatalf("other state = %d", s)
	}

	time.Sleep(400 * time.Millisecond)
	if s := b.State("hook"); s != 1 {
		t.Fatalf("state after OpenFor = %d; want 1 (half-open)", s)
	}
	gauge := breakerGauge(t, b)
	if gauge["hook"] != 1 || gauge["other"] != 0 {
		t.Errorf("millrace_breaker_state = %v; want hook 1, other 0", gauge)
	}
	if err := b.Do("hook", call(nil)); err != nil {
		t.Fatalf("trial call: %v", err)
	}
	if s := b.State("hook"); s != 0 {
		t.Fatalf("state after a successful trial = %d; want 0", s)
	}
}

// A breaker opens for FirstOpenFor; each failed trial doubles the
// interval up to OpenFor, and a successful one closes it and starts over.
// A refused call's OpenError says how long until the next trial.
func TestBreakerOpenIntervalDoubles(t *testing.T) {
	t.Parallel()
	const first, most = 100 * time.Millisecond, 400 * time.Millisecond
	b := middleware.NewBreakers(middleware.BreakerConfig{Failures: 1, FirstOpenFor: first, OpenFor: most}, nil)
	fail := errors.New("503")
	calls := 0
	call := func(err error) func() error { return func() error { calls++; return err } }
	// refusedFor checks that a call is refused without running, with a
	// wait of about want (the time since the breaker opened is taken
	// off it), and sleeps the wait out.
	refusedFor := func(want time.Duration) {
		t.Helper()
		before := calls
		err := b.Do("k", call(nil))
		w := middleware.BreakerWait(err)
		if !errors.Is(err, middleware.ErrBreakerOpen) || calls != before {
			t.Fatalf("Do while open = %v (calls %d→%d); want a refusal without a call", err, before, calls)
		}
		if w > want || w < want-50*time.Millisecond {
			t.Fatalf("refused with a wait of %s; want about %s", w, want)
		}
		time.Sleep(w + 10*time.Millisecond)
	}
	_ = b.Do("k", call(fail)) // opens: 100ms
	refusedFor(first)
	for _, next := range []time.Duration{2 * first, 4 * first, most, most} {
		if err := b.Do("k", call(fail)); !errors.Is(err, fail) { // the trial fails: open again, longer
			t.Fatalf("trial = %v; want the call's error", err)
		}
		if s := b.State("k"); s != 2 {
			t.Fatalf("state after a failed trial = %d; want 2", s)
		}
		refusedFor(next)
	}
	if err := b.Do("k", call(nil)); err != nil {
		t.Fatalf("trial: %v", err)
	}
	if s := b.State("k"); s != 0 {
		t.Fatalf("state after a successful trial = %d; want 0", s)
	}
	_ = b.Do("k", call(fail)) // opens again: back to the first interval
	refusedFor(first)
}

func TestBreakerIgnoresCancellation(t *testing.T) {
	t.Parallel()
	b := middleware.NewBreakers(middleware.BreakerConfig{Failures: 2}, nil)
	for range 5 {
		_ = b.Do("k", func() error { return context.Canceled })
	}
	if s := b.State("k"); s != 0 {
		t.Errorf("state after cancelled calls = %d; want 0", s)
	}
}

func breakerGauge(t *testing.T, b *middleware.Breakers) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(b)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "millrace_breaker_state" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
	}
	return out
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	ms := func(n int) config.Duration { return config.Duration(time.Duration(n) * time.Millisecond) }
	for _, tc := range []struct {
		name   string
		policy config.Retry
		n      int
		want   time.Duration
	}{
		{"exponential 1", config.Retry{Backoff: "exponential", Initial: ms(100), Max: ms(30000)}, 1, 100 * time.Millisecond},
		{"exponential 3", config.Retry{Backoff: "exponential", Initial: ms(100), Max: ms(30000)}, 3, 400 * time.Millisecond},
		{"exponential capped", config.Retry{Backoff: "exponential", Initial: ms(100), Max: ms(250)}, 5, 250 * time.Millisecond},
		{"linear 3", config.Retry{Backoff: "linear", Initial: ms(100), Max: ms(30000)}, 3, 300 * time.Millisecond},
		{"fixed 4", config.Retry{Backoff: "fixed", Initial: ms(100), Max: ms(30000)}, 4, 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := middleware.NewBackoff(tc.policy).Next(tc.n, 0); got != tc.want {
				t.Errorf("Next(%d) = %v; want %v", tc.n, got, tc.want)
			}
			p := tc.policy
			p.Jitter = 0.25
			lo, hi := time.Duration(float64(tc.want)*0.75), time.Duration(float64(tc.want)*1.25)
			seen := map[time.Duration]bool{}
			for range 200 {
				got := middleware.NewBackoff(p).Next(tc.n, 0)
				if got < lo || got > hi {
					t.Fatalf("Next(%d) with 25%% jitter = %v; want within [%v, %v]", tc.n, got, lo, hi)
				}
				seen[got] = true
			}
			if len(seen) < 10 {
				t.Errorf("jitter gave only %d distinct waits in 200", len(seen))
			}
		})
	}
	b := middleware.NewBackoff(config.Retry{Backoff: "fixed", Initial: ms(100), Max: ms(1000), MaxAttempts: 4})
	if got := b.Next(1, 2*time.Second); got != 2*time.Second {
		t.Errorf("Next with atLeast 2s = %v; want 2s", got)
	}
	if b.Attempts() != 4 {
		t.Errorf("Attempts = %d", b.Attempts())
	}
}

func TestSleepHonoursContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := middleware.Sleep(ctx, 10*time.Second)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("Sleep = %v after %v; want the ctx error promptly", err, time.Since(start))
	}
	if err := middleware.Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stores.Reservation(0).String(), "unknown") {
		t.Error("Reservation(0).String()")
	}
}

// With a failure ratio, a breaker opens once that share of the window's
// calls failed, from MinRequests calls on, even with no run of
// consecutive failures; with the consecutive rule off, alternating
// failures below the ratio leave it closed.
func TestBreakerFailureRatio(t *testing.T) {
	t.Parallel()
	fail := errors.New("503")
	b := middleware.NewBreakers(middleware.BreakerConfig{FailureRatio: 0.5, MinRequests: 6, Window: time.Minute}, nil)
	// Failures == 0 with a ratio: the consecutive rule is off.
	for i := range 5 {
		var err error
		if i%2 == 0 {
			err = fail
		}
		_ = b.Do("k", func() error { return err })
	}
	if s := b.State("k"); s != 0 {
		t.Fatalf("state after 3 failures in 5 calls (< min_requests 6) = %d; want 0", s)
	}
	_ = b.Do("k", func() error { return nil }) // 3 of 6 failed: 50 %, not yet opened by a success
	if s := b.State("k"); s != 0 {
		t.Fatalf("state after a success = %d; want 0 (a success never opens)", s)
	}
	_ = b.Do("k", func() error { return fail }) // 4 of 7
	if s := b.State("k"); s != 2 {
		t.Fatalf("state after 4 failures in 7 calls, ratio 0.5 = %d; want 2 (open)", s)
	}

	low := middleware.NewBreakers(middleware.BreakerConfig{FailureRatio: 0.9, MinRequests: 4, Window: time.Minute}, nil)
	for i := range 20 {
		var err error
		if i%2 == 0 {
			err = fail
		}
		_ = low.Do("k", func() error { return err })
	}
	if s := low.State("k"); s != 0 {
		t.Fatalf("state after 50 %% failures with ratio 0.9 = %d; want 0", s)
	}
}

// Configure gives one key its own settings: its open interval and
// number of probes, while other keys keep the defaults.
func TestBreakerConfigurePerKey(t *testing.T) {
	t.Parallel()
	fail := errors.New("503")
	b := middleware.NewBreakers(middleware.BreakerConfig{Failures: 1, FirstOpenFor: time.Hour, OpenFor: time.Hour}, nil)
	if err := b.Configure("fast", middleware.BreakerConfig{Failures: 1, OpenFor: 100 * time.Millisecond, HalfOpenRequests: 2},
		"observers.o.actions[0].breaker"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"fast", "slow"} {
		_ = b.Do(k, func() error { return fail })
		if s := b.State(k); s != 2 {
			t.Fatalf("%s: state after a failure = %d; want 2", k, s)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if s := b.State("fast"); s != 1 {
		t.Fatalf("fast: state after its 100ms open interval = %d; want 1 (half-open)", s)
	}
	if s := b.State("slow"); s != 2 {
		t.Fatalf("slow: state = %d; want 2: the default open interval is an hour", s)
	}
	// Two probes: one success leaves it half-open, the second closes it.
	if err := b.Do("fast", func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	if s := b.State("fast"); s != 1 {
		t.Fatalf("fast: state after 1 of 2 probes = %d; want 1", s)
	}
	if err := b.Do("fast", func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	if s := b.State("fast"); s != 0 {
		t.Fatalf("fast: state after 2 of 2 probes = %d; want 0", s)
	}
}

// Actions sharing an endpoint share its breaker: a second override with
// other settings is refused, naming both key paths; an equal one is fine.
func TestBreakerConfigureConflict(t *testing.T) {
	t.Parallel()
	b := middleware.NewBreakers(middleware.BreakerConfig{}, nil)
	cfg := middleware.BreakerConfig{OpenFor: 5 * time.Second}
	if err := b.Configure("https://h", cfg, "observers.a.actions[0].breaker"); err != nil {
		t.Fatal(err)
	}
	if err := b.Configure("https://h", cfg, "observers.b.actions[0].breaker"); err != nil {
		t.Fatalf("an equal override: %v", err)
	}
	err := b.Configure("https://h", middleware.BreakerConfig{OpenFor: time.Second}, "observers.c.actions[1].breaker")
	if err == nil || !strings.Contains(err.Error(), "observers.c.actions[1].breaker") || !strings.Contains(err.Error(), "observers.a.actions[0].breaker") {
		t.Fatalf("Configure with other settings = %v; want an error naming both paths", err)
	}
}
