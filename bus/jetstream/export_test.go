package jetstream_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/millrace/millrace/bus/jetstream"
	"github.com/millrace/millrace/internal/testenv"
)

// TestExport: the messages held are read in stream order, --limit
// stops early, and a tap reads every message published while it runs,
// also those that arrive as one of its waits would end.
func TestExport(t *testing.T) {
	ctx := context.Background()
	_, js, prefix := testenv.NATS(t)
	cfg := busConfig(t, js, prefix, "export")
	subject := cfg.Subject("events", "Order")
	for i := range 100 {
		if _, err := js.Publish(ctx, subject, fmt.Appendf(nil, "held-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	export := func(from uint64, until time.Time, limit int) []string {
		t.Helper()
		var got []string
		var last uint64
		err := jetstream.Export(ctx, js, cfg, "events", from, time.Time{}, until, limit, func(seq uint64, p []byte) error {
			if seq <= last {
				return fmt.Errorf("sequence %d after %d", seq, last)
			}
			last = seq
			got = append(got, string(p))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	if got := export(0, time.Time{}, 0); len(got) != 100 || got[0] != "held-0" || got[99] != "held-99" {
		t.Fatalf("held: %d messages (%v…); want held-0 to held-99", len(got), got[:min(len(got), 3)])
	}
	if got := export(90, time.Time{}, 0); len(got) != 10 || got[0] != "held-90" {
		t.Fatalf("from 90: %d messages starting %v; want the 10 after it", len(got), got[:min(len(got), 1)])
	}
	if got := export(0, time.Time{}, 7); len(got) != 7 || got[6] != "held-6" {
		t.Fatalf("limit 7: %v", got)
	}

	// The tap: a message every 5 ms for most of its 2.5 s, so that
	// messages keep arriving across every wait the tap makes.
	const window = 2500 * time.Millisecond
	until := time.Now().Add(window)
	published := make(chan int)
	go func() {
		n := 0
		for time.Until(until) > 300*time.Millisecond {
			if _, err := js.Publish(ctx, subject, fmt.Appendf(nil, "tap-%d", n)); err != nil {
				t.Error(err)
				break
			}
			n++
			time.Sleep(5 * time.Millisecond)
		}
		published <- n
	}()
	got := export(0, until, 0)
	n := <-published
	if over := time.Since(until); over > 500*time.Millisecond {
		t.Errorf("the tap ended %s after its end", over)
	}
	if len(got) != 100+n {
		t.Fatalf("tap: %d messages; want the 100 held and the %d published during it", len(got), n)
	}
	for i := range n {
		if want := fmt.Sprintf("tap-%d", i); got[100+i] != want {
			t.Fatalf("tap: message %d is %s; want %s", 100+i, got[100+i], want)
		}
	}
}
