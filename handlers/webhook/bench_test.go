package webhook_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/millrace/millrace/config"
)

// BenchmarkWebhook measures signed deliveries of the default envelope to
// a local receiver over keep-alive connections, from parallel callers as
// the router runs actions. ns/op is wall time per delivery: 1e9/ns_op is
// deliveries per second.
func BenchmarkWebhook(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	name := "MILLRACE_BENCH_HOOK_SECRET"
	b.Setenv(name, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	a := build(b, config.Action{"type": "webhook", "url": srv.URL + "/hook", "allow_private": true, "secret_env": name})
	ev := newEvent()
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	cpu0 := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := a.Execute(b.Context(), ev); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
	// CPU time per delivery, sender and receiver together, does not
	// depend on what else the machine runs: 2 cores / cpu-µs/op bounds
	// the deliveries per second of a 2-core host.
	if cpu := processCPU() - cpu0; cpu > 0 {
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
	}
}
