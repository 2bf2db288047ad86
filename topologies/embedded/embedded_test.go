package embedded

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/internal/testenv"
)

// TestServerSync starts the embedded topology and asks the running
// server, through its monitoring API (varz, what /varz serves), when it
// forces writes to disk: before each acknowledgement with the default
// config, on its background interval with embedded.sync = "2m". The
// start-up log says the same.
func TestServerSync(t *testing.T) {
	for _, tt := range []struct {
		sync         string // "" keeps the default
		wantAlways   bool
		wantInterval time.Duration // 0: not checked
		wantLog      string
	}{
		{sync: "", wantAlways: true, wantLog: "sync=always"},
		{sync: "2m", wantAlways: false, wantInterval: 2 * time.Minute, wantLog: "sync=2m0s"},
	} {
		t.Run("sync="+tt.sync, func(t *testing.T) {
			cfg := config.Default()
			cfg.Embedded.DataDir = t.TempDir()
			if tt.sync != "" {
				cfg.Embedded.Sync = tt.sync
			}
			if err := Validate(cfg); err != nil {
				t.Fatal(err)
			}
			var logs testenv.LogBuffer
			b, ns, err := start(context.Background(), cfg, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatalf("start: %v", err)
			}
			t.Cleanup(func() {
				if err := b.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			})
			v, err := ns.Varz(nil)
			if err != nil {
				t.Fatalf("varz: %v", err)
			}
			jsc := v.JetStream.Config
			if jsc == nil {
				t.Fatal("varz has no JetStream config: JetStream is not running")
			}
			if jsc.SyncAlways != tt.wantAlways || (tt.wantInterval != 0 && jsc.SyncInterval != tt.wantInterval) {
				t.Errorf("running server: sync_always %v, sync_interval %s; want %v, %v", jsc.SyncAlways, jsc.SyncInterval, tt.wantAlways, tt.wantInterval)
			}
			if !strings.Contains(logs.String(), tt.wantLog) {
				t.Errorf("start-up log does not say %s:\n%s", tt.wantLog, logs.String())
			}
		})
	}
}

// TestAsyncErrorsMetric: the backend's collectors, which the router
// registers, include the connection's asynchronous error counter, at 0
// for each kind from the start.
func TestAsyncErrorsMetric(t *testing.T) {
	cfg := config.Default()
	cfg.Embedded.DataDir = t.TempDir()
	b, err := Build(context.Background(), cfg, nil)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	reg := prometheus.NewRegistry()
	reg.MustRegister(b.Collectors...)
	n, err := testutil.GatherAndCount(reg, "millrace_bus_async_errors_total")
	if err != nil || n != 2 {
		t.Errorf("millrace_bus_async_errors_total: %d series (%v); want 2 (slow_consumer, other)", n, err)
	}
}

// With bus.driver = "watermill" the embedded server carries events
// through watermill-nats: one published message is delivered with its
// ordering key, and acked.
func TestWatermillDriver(t *testing.T) {
	cfg := config.Default()
	cfg.Embedded.DataDir = t.TempDir()
	cfg.Bus.Driver = config.DriverWatermill
	cfg.Router.ShutdownTimeout = config.Duration(time.Second)
	b, err := Build(context.Background(), cfg, nil)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	if name := fmt.Sprint(b.Subscriber); name != "watermill-nats.Subscriber" {
		t.Errorf("subscriber is %s, want watermill-nats's", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msgs, err := b.Subscriber.Subscribe(ctx, cfg.Router.Topic)
	if err != nil {
		t.Fatal(err)
	}
	m := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
	bus.Route(m, "shop", "Order", "1", "", "INSERT")
	if err := b.Publisher.Publish(cfg.Router.Topic, m); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-msgs:
		got.Ack()
		if got.UUID != m.UUID || got.Metadata.Get(bus.KeyMetadata) != m.Metadata.Get(bus.KeyMetadata) {
			t.Errorf("received %s with key %q, want %s with key %q", got.UUID, got.Metadata.Get(bus.KeyMetadata),
				m.UUID, m.Metadata.Get(bus.KeyMetadata))
		}
	case <-ctx.Done():
		t.Fatal("no message within 20s")
	}
}
