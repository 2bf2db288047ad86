package webhook_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
)

// TestConnectionsReused sends rounds of concurrent deliveries to one
// receiver and counts the connections it accepted: the action's idle
// pool must keep one connection per delivery in flight, so that the
// later rounds open none. (With net/http's default of 2 idle
// connections per host, each round would open all but 2 anew.)
func TestConnectionsReused(t *testing.T) {
	t.Parallel()
	const inFlight, rounds = 64, 5
	var opened atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		// Long enough that the round's deliveries overlap.
		time.Sleep(5 * time.Millisecond)
		w.WriteHeader(http.StatusNoContent)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	a := build(t, config.Action{"type": "webhook", "url": srv.URL + "/hook", "allow_private": true})
	ev := newEvent()
	for range rounds {
		var wg sync.WaitGroup
		errs := make(chan error, inFlight)
		for range inFlight {
			wg.Go(func() {
				if err := a.Execute(context.Background(), ev); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	// A little slack: a dial the transport started for a request that
	// then got an idle connection still counts.
	if n := opened.Load(); n > inFlight+inFlight/8 {
		t.Errorf("%d connections opened for %d rounds of %d concurrent deliveries; want at most about %d (one per delivery in flight)",
			n, rounds, inFlight, inFlight)
	}
	t.Logf("%d connections for %d deliveries", opened.Load(), rounds*inFlight)
}
