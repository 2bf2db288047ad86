package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/middleware"
)

var errBusy = fmt.Errorf("answered 429: %w", handlers.ErrOverloaded)

func acquire(t *testing.T, l *middleware.Limit, n int) []middleware.Ticket {
	t.Helper()
	ts := make([]middleware.Ticket, n)
	for i := range ts {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var err error
		ts[i], err = l.Acquire(ctx, "")
		cancel()
		if err != nil {
			t.Fatalf("acquire %d of %d: %v", i+1, n, err)
		}
	}
	return ts
}

func state(t *testing.T, l *middleware.Limit, wantLimit, wantInflight int) {
	t.Helper()
	if limit, inflight := l.State(); limit != wantLimit || inflight != wantInflight {
		t.Fatalf("limit %d, in flight %d; want %d, %d", limit, inflight, wantLimit, wantInflight)
	}
}

func TestLimitAdaptsToOverload(t *testing.T) {
	l := middleware.NewLimits(middleware.LimitConfig{MaxConcurrency: 32, Adaptive: true}).Get("http://a")
	ts := acquire(t, l, 32)
	state(t, l, 32, 32)

	// The 33rd waits for a slot.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	if _, err := l.Acquire(ctx, ""); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("acquire over the limit = %v; want a wait until ctx ends", err)
	}
	cancel()

	// The endpoint takes 20. The 21st is refused while the others are
	// in flight (the cap counts them: n = 32): one cut for the round,
	// 32 -> 16. The later ones of the round cut no further, and each
	// lowers the cap to what it saw; then the 20 accepted succeed.
	for _, tk := range ts[20:] {
		tk.Done(errBusy)
	}
	state(t, l, 16, 20)
	for _, tk := range ts[:20] {
		tk.Done(nil)
	}
	state(t, l, 17, 0) // 16 + 20 × about 1/16

	// Successes grow the limit by one per limit's worth, up to the cap:
	// the refusals saw at most 26 in flight (the 26th started with 26,
	// the 27th when 26 were left), so the cap is 26 - 1 = 25... until a
	// refusal with 21 in flight brings it to 20.
	for range 400 {
		tk := acquire(t, l, 1)[0]
		tk.Done(nil)
	}
	limit, _ := l.State()
	if limit <= 20 || limit >= 32 {
		t.Fatalf("limit %d after the successes; want it grown past 20, below 32 (capped)", limit)
	}
	ts = acquire(t, l, 21)
	ts[20].Done(errBusy)
	for _, tk := range ts[:20] {
		tk.Done(nil)
	}
	for range 400 {
		tk := acquire(t, l, 1)[0]
		tk.Done(nil)
	}
	state(t, l, 20, 0)

	// A success says nothing of the endpoint's load beyond its own slot;
	// a plain failure neither cuts nor grows.
	tk := acquire(t, l, 1)[0]
	tk.Done(errors.New("connection refused"))
	state(t, l, 20, 0)
}

func TestLimitNotAdaptiveStaysAtCeiling(t *testing.T) {
	l := middleware.NewLimits(middleware.LimitConfig{MaxConcurrency: 4}).Get("http://a")
	for _, tk := range acquire(t, l, 4) {
		tk.Done(errBusy)
	}
	state(t, l, 4, 0)
}

func TestLimitRetryAfterHaltsTheEndpoint(t *testing.T) {
	l := middleware.NewLimits(middleware.LimitConfig{MaxConcurrency: 8, Adaptive: true}).Get("http://a")
	tk := acquire(t, l, 1)[0]
	tk.Done(&handlers.RetryAfterError{Err: errBusy, After: 300 * time.Millisecond})
	start := time.Now()
	acquire(t, l, 1)[0].Done(nil)
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("the next request started after %v; want it to wait out Retry-After (300ms)", d)
	}
}

func TestLimitRate(t *testing.T) {
	ls := middleware.NewLimits(middleware.LimitConfig{MaxConcurrency: 8,
		Endpoints: map[string]middleware.EndpointLimit{"http://slow": {Rate: rate.Limit(20), Burst: 1}}})
	l := ls.Get("http://slow")
	start := time.Now()
	for range 6 {
		acquire(t, l, 1)[0].Done(nil)
	}
	// One at once, then five at 20/s: 250ms.
	if d := time.Since(start); d < 200*time.Millisecond || d > 2*time.Second {
		t.Fatalf("6 requests at 20/s took %v; want about 250ms", d)
	}
	other := ls.Get("http://other")
	start = time.Now()
	for range 6 {
		acquire(t, other, 1)[0].Done(nil)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("an endpoint without a rate took %v for 6 requests", d)
	}
}

func TestLimitCancelFreesTheSlot(t *testing.T) {
	l := middleware.NewLimits(middleware.LimitConfig{MaxConcurrency: 1, Adaptive: true}).Get("http://a")
	tk := acquire(t, l, 1)[0]
	tk.Cancel()
	state(t, l, 1, 0)
	acquire(t, l, 1)[0].Done(nil)
}

// After ProbeAfter without a refusal, the limit may grow past the
// concurrency that was refused: the endpoint may take more now.
func TestLimitProbesAfterTheHold(t *testing.T) {
	l := middleware.NewLimits(middleware.LimitConfig{MaxConcurrency: 8, Adaptive: true, ProbeAfter: 200 * time.Millisecond}).Get("http://a")
	ts := acquire(t, l, 5)
	ts[4].Done(errBusy) // the 5th was refused: cap 4
	for _, tk := range ts[:4] {
		tk.Done(nil)
	}
	for range 100 {
		acquire(t, l, 1)[0].Done(nil)
	}
	state(t, l, 4, 0)
	time.Sleep(300 * time.Millisecond)
	for range 100 {
		acquire(t, l, 1)[0].Done(nil)
	}
	if limit, _ := l.State(); limit <= 4 {
		t.Fatalf("limit %d after the hold; want it past 4, probing", limit)
	}
}

// Forty requests of one tenant wait for an endpoint that takes one at a
// time, then one of another tenant: it starts within one turn of the
// first tenant's, not after its forty.
func TestLimitServesTenantsInTurn(t *testing.T) {
	l := middleware.NewLimits(middleware.LimitConfig{MaxConcurrency: 1}).Get("http://a")
	first := acquire(t, l, 1)[0]
	started := make(chan string, 41)
	var wg sync.WaitGroup
	wait := func(tenant string) {
		defer wg.Done()
		tk, err := l.Acquire(context.Background(), tenant)
		if err != nil {
			t.Errorf("acquire for %s: %v", tenant, err)
			return
		}
		started <- tenant
		tk.Done(nil)
	}
	for range 40 {
		wg.Add(1)
		go wait("big")
	}
	waitFor(t, func() bool { return l.Waiting() == 40 })
	wg.Add(1)
	go wait("small")
	waitFor(t, func() bool { return l.Waiting() == 41 })
	first.Done(nil)
	wg.Wait()
	close(started)
	n := 0
	for tenant := range started {
		n++
		if tenant == "small" {
			if n > 2 {
				t.Fatalf("the small tenant's request started %d-th of 41; want within the first 2", n)
			}
			return
		}
	}
	t.Fatal("the small tenant's request never started")
}

// A request that arrives during a Retry-After pause, with no other
// waiting, starts when the pause ends: nothing else frees a slot to wake
// it.
func TestLimitStartsTheWaitingAtTheEndOfAPause(t *testing.T) {
	l := middleware.NewLimits(middleware.LimitConfig{MaxConcurrency: 4}).Get("http://a")
	tk := acquire(t, l, 1)[0]
	tk.Done(&handlers.RetryAfterError{Err: errBusy, After: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	next, err := l.Acquire(ctx, "t")
	if err != nil {
		t.Fatalf("acquire after the pause: %v", err)
	}
	next.Done(nil)
	if d := time.Since(start); d < 150*time.Millisecond || d > time.Second {
		t.Fatalf("started after %v; want the pause's 200ms", d)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}
