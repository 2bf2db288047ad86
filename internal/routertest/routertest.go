package routertest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/router"
)

// timeout bounds the start and the stop of a router.
const timeout = 30 * time.Second

// Start runs a router on cfg with opts (opts.Ready is set here) and
// returns its HTTP address ("127.0.0.1:port") and a stop function. Stop
// is idempotent and also runs when the test ends; a router that fails,
// or does not start or stop within 30 s, fails the test.
func Start(t testing.TB, cfg *config.Config, opts router.Options) (addr string, stop func()) {
	t.Helper()
	ready := make(chan string, 1)
	opts.Ready = ready
	r, err := router.New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("router Run: %v", err)
				}
			case <-time.After(timeout):
				t.Errorf("router did not stop within %s", timeout)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case addr = <-ready:
		return addr, stop
	case err := <-done:
		once.Do(func() { cancel() }) // Run is over: stop has nothing to wait for
		t.Fatalf("router Run: %v", err)
	case <-time.After(timeout):
		t.Fatalf("router not ready within %s", timeout)
	}
	return "", stop
}
