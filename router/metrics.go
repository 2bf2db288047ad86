package router

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/millrace/millrace/middleware"
)

// Metrics are millrace's own Prometheus metrics.
type Metrics struct {
	Registry     *prometheus.Registry
	Ingested     *prometheus.CounterVec // by result (accepted, rejected, unauthorized, forbidden, rate_limited) and ingest token
	Events       *prometheus.CounterVec // by result: handled, failed (redelivered), undecodable, dropped
	Observers    *prometheus.CounterVec // by observer, result: succeeded, skipped_condition, duplicate_skipped, dead_lettered, logged, dropped, failed (redelivered)
	EventLatency prometheus.Histogram
	// Delivery are the delivery middleware's counters: dedup, result
	// cache, retries and actions.
	Delivery *middleware.Metrics
}

// NewMetrics registers the metrics on a new registry, with the Go and
// process collectors.
func NewMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{
		Registry: reg,
		Ingested: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "millrace_ingest_events_total",
			Help: "Events received by POST /v1/events (requests, when refused whole), by result and ingest token.",
		}, []string{"result", "token"}),
		Events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "millrace_events_total", Help: "Events taken from the bus, by result.",
		}, []string{"result"}),
		Observers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "millrace_observer_runs_total", Help: "Observer outcomes per event, by observer and result.",
		}, []string{"observer", "result"}),
		EventLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "millrace_event_latency_seconds", Help: "From the event's timestamp to the end of its handling.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
		}),
	}
	m.Delivery = middleware.NewMetrics()
	reg.MustRegister(m.Ingested, m.Events, m.Observers, m.EventLatency)
	reg.MustRegister(m.Delivery.Collectors()...)
	return m
}

// outcomes are the results of millrace_observer_runs_total.
var outcomes = []string{middleware.OutcomeSucceeded, middleware.OutcomeSkipped, middleware.OutcomeDuplicate,
	middleware.OutcomeDeadLettered, middleware.OutcomeLogged, middleware.OutcomeDropped, middleware.OutcomeRedeliver, middleware.OutcomeParked}

// observerRuns returns observer's run counters by result, resolved once:
// WithLabelValues hashes and checks its labels on every call.
func (m *Metrics) observerRuns(observer string) map[string]prometheus.Counter {
	runs := make(map[string]prometheus.Counter, len(outcomes))
	for _, o := range outcomes {
		runs[o] = m.Observers.WithLabelValues(observer, o)
	}
	return runs
}
