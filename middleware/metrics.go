package middleware

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the counters of the dedup ledger, the result cache and
// retries. The circuit breakers' gauge comes from Breakers itself.
type Metrics struct {
	// DedupHits counts duplicates skipped (the key was done), by observer.
	DedupHits *prometheus.CounterVec
	// DedupMisses counts keys claimed, by observer.
	DedupMisses *prometheus.CounterVec
	// DedupWaits counts runs that found their key in flight elsewhere
	// and waited for it, by observer.
	DedupWaits *prometheus.CounterVec
	// DedupErrors counts dedup store failures; each let an event through
	// (fail open).
	DedupErrors prometheus.Counter
	// CacheHits counts actions skipped because they already succeeded
	// for the event, by observer.
	CacheHits *prometheus.CounterVec
	// CacheMisses counts actions looked up and not found, by observer.
	CacheMisses *prometheus.CounterVec
	// CacheErrors counts result cache failures (fail open).
	CacheErrors prometheus.Counter
	// Retries counts action attempts after the first, by observer.
	Retries *prometheus.CounterVec
	// Actions counts action outcomes (succeeded, failed, breaker_open)
	// by observer and action; ActionDuration times each execution.
	Actions        *prometheus.CounterVec
	ActionDuration *prometheus.HistogramVec
}

// NewMetrics returns unregistered metrics; see Collectors.
func NewMetrics() *Metrics {
	byObserver := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"observer"})
	}
	return &Metrics{
		DedupHits:   byObserver("millrace_dedup_hits_total", "Duplicate deliveries skipped because the event was already handled by the observer."),
		DedupMisses: byObserver("millrace_dedup_misses_total", "Dedup keys claimed: first deliveries and retries after a failure."),
		DedupWaits:  byObserver("millrace_dedup_waits_total", "Deliveries that found the same event in flight elsewhere and waited for it."),
		DedupErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "millrace_dedup_errors_total",
			Help: "Dedup store failures; the event was processed anyway (fail open)."}),
		CacheHits:   byObserver("millrace_cache_hits_total", "Actions skipped because they already succeeded for the event."),
		CacheMisses: byObserver("millrace_cache_misses_total", "Actions looked up in the result cache and not found."),
		CacheErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "millrace_cache_errors_total",
			Help: "Result cache failures; the action ran anyway (fail open)."}),
		Retries: byObserver("millrace_retries_total", "Action attempts after the first, after a transient failure."),
		Actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "millrace_action_runs_total", Help: "Action outcomes, by observer, action and result.",
		}, []string{"observer", "action", "result"}),
		ActionDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "millrace_action_duration_seconds", Help: "Time one action took.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"observer", "action"}),
	}
}

// Collectors returns the metrics to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.DedupHits, m.DedupMisses, m.DedupWaits, m.DedupErrors,
		m.CacheHits, m.CacheMisses, m.CacheErrors, m.Retries, m.Actions, m.ActionDuration}
}
