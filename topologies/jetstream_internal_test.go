package topologies

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/millrace/millrace/bus/jetstream"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/internal/testenv"
)

// TestSlowConsumerIsLoggedAndCounted provokes a slow consumer on the
// nats topology's connection to the test server: a core subscription
// whose handler blocks, with a pending limit of one message, gets a
// burst. nats.go drops what does not fit and reports it asynchronously;
// millrace_bus_async_errors_total{kind="slow_consumer"} rises and an
// error line names the kind and the subject.
func TestSlowConsumerIsLoggedAndCounted(t *testing.T) {
	cfg := config.Default()
	cfg.Topology = "nats"
	cfg.NATS.URL = testenv.NATSURL()
	var logs testenv.LogBuffer
	m := jetstream.NewMetrics()
	nc, err := connectNATS(cfg, slog.New(slog.NewTextHandler(&logs, nil)), m)
	if err != nil {
		t.Fatalf("the test needs NATS (test/services.sh starts it; %s sets another): %v", testenv.NATSURLEnv, err)
	}
	t.Cleanup(nc.Close)

	subject := testenv.Name(t) + ".slow"
	release := make(chan struct{})
	sub, err := nc.Subscribe(subject, func(*natsgo.Msg) { <-release })
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last first: the handler is released before the
	// connection closes.
	t.Cleanup(func() { close(release) })
	if err := sub.SetPendingLimits(1, 1<<20); err != nil {
		t.Fatal(err)
	}
	for range 100 {
		if err := nc.Publish(subject, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	slow := m.AsyncErrors.WithLabelValues(jetstream.AsyncErrorSlowConsumer)
	logged := func() bool {
		l := logs.String()
		return strings.Contains(l, `msg="nats: asynchronous error"`) && strings.Contains(l, "kind=slow_consumer") &&
			strings.Contains(l, "subject="+subject)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if testutil.ToFloat64(slow) >= 1 && logged() {
			break
		}
	}
	if got := testutil.ToFloat64(slow); got < 1 {
		t.Errorf("millrace_bus_async_errors_total{kind=%q} = %v after the burst; want at least 1", jetstream.AsyncErrorSlowConsumer, got)
	}
	if got := testutil.ToFloat64(m.AsyncErrors.WithLabelValues(jetstream.AsyncErrorOther)); got != 0 {
		t.Errorf("millrace_bus_async_errors_total{kind=%q} = %v; want 0", jetstream.AsyncErrorOther, got)
	}
	if !logged() {
		t.Errorf("no error line naming kind=slow_consumer and subject=%s; the log:\n%s", subject, logs.String())
	}
	if dropped, err := sub.Dropped(); err != nil || dropped == 0 {
		t.Errorf("the subscription dropped %d messages (%v); the burst should have overflowed it", dropped, err)
	}
}
