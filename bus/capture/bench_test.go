package capture_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/millrace/millrace/bus/capture"
)

// BenchmarkCapture measures the changes read and acked per second by one
// Subscriber from a change log pre-filled with 50,000 rows. Each
// iteration reads the whole log as a new consumer group.
func BenchmarkCapture(b *testing.B) {
	const rows = 50_000
	pool, schema := setup(b)
	run(b, pool, "INSERT INTO orders SELECT g, 'new', g * 1.5, 'note ' || g FROM generate_series(1, $1::int) g", rows)
	cfg := config(schema)
	cfg.BatchSize = 500
	cfg.MaxInFlight = 64
	b.ResetTimer()
	var elapsed, cpu time.Duration
	for i := 0; i < b.N; i++ {
		cpu0 := cpuTime()
		sub := capture.NewSubscriber(pool, cfg, nil)
		ctx, cancel := context.WithCancel(context.Background())
		start := time.Now()
		ch, err := sub.Subscribe(ctx, fmt.Sprintf("bench%d", i))
		if err != nil {
			b.Fatal(err)
		}
		for range rows {
			next(b, ch).Ack()
		}
		elapsed += time.Since(start)
		cpu += cpuTime() - cpu0
		cancel()
		_ = sub.Close()
		if got := checkpoint(b, pool, schema, cfg.Source, fmt.Sprintf("bench%d", i)); got != rows {
			b.Fatalf("checkpoint after the run = %d, want %d", got, rows)
		}
	}
	b.ReportMetric(float64(rows*b.N)/elapsed.Seconds(), "changes/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(rows*b.N), "cpu-µs/change")
}

// cpuTime is the CPU time used by this process so far: on a shared
// machine it says more about the reader's cost than the wall clock.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
