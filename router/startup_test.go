package router_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/router"
	"github.com/millrace/millrace/topologies"
)

// A service that does not answer, then an attempt that the start-up
// deadline cuts short in another step (a capture's migration, on a
// loaded machine): Run must still give up naming the service, its key
// and router.startup_timeout, as a *topologies.DependencyError, not the
// cut step's "context deadline exceeded".
func TestStartupTimeoutNamesTheServiceWhenTheDeadlineCutsAnotherStep(t *testing.T) {
	var attempts atomic.Int32
	topo := topologies.NewRegistry()
	topo.MustRegister(topologies.Topology{Name: "flaky", Build: func(ctx context.Context, _ *config.Config, _ *slog.Logger) (*topologies.Backend, error) {
		if attempts.Add(1) == 1 {
			return nil, topologies.Unreachable("nats", "connect", "nats.url", "nats://127.0.0.1:1", errors.New("connection refused"))
		}
		<-ctx.Done()
		return nil, fmt.Errorf("capture: migrate schema s: %w", ctx.Err())
	}})
	cfg := config.Default()
	cfg.Topology = "flaky"
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Router.StartupTimeout = config.Duration(time.Second)
	r, err := router.New(cfg, router.Options{Topologies: topo, Actions: handlers.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = r.Run(ctx)
	var dep *topologies.DependencyError
	if !errors.As(err, &dep) {
		t.Fatalf("Run = %v; want a *topologies.DependencyError", err)
	}
	for _, want := range []string{"nats: connect", "nats.url", "router.startup_timeout"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not name %q: %v", want, err)
		}
	}
	if n := attempts.Load(); n < 2 {
		t.Errorf("%d attempts; want the second one cut by the deadline", n)
	}
}
