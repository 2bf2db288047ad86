package middleware

import (
	"context"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/internal/fair"
)

// LimitConfig bounds the requests to each action endpoint.
type LimitConfig struct {
	// MaxConcurrency caps the requests in flight to one endpoint.
	// Default 64.
	MaxConcurrency int
	// Adaptive lowers an endpoint's limit when it shows overload and
	// raises it again with its successes (AIMD); off, the limit stays
	// at MaxConcurrency.
	Adaptive bool
	// ProbeAfter is how long the limit stays below the concurrency at
	// which the endpoint last refused a request before it may grow past
	// it again. Default 30s.
	ProbeAfter time.Duration
	// Endpoints overrides MaxConcurrency, and sets a rate, per endpoint
	// name (handlers.URLEndpoint, handlers.ServerEndpoint).
	Endpoints map[string]EndpointLimit
}

// EndpointLimit is one endpoint's override.
type EndpointLimit struct {
	// MaxConcurrency, when > 0, caps the endpoint's requests in flight.
	MaxConcurrency int
	// Rate, when > 0, is the most requests per second the endpoint
	// gets, with bursts of Burst (default 1).
	Rate  rate.Limit
	Burst int
}

// maxRetryAfterPause bounds how long one answer's Retry-After halts an
// endpoint: a server's date far in the future must not stop it for good.
const maxRetryAfterPause = time.Minute

// Limits holds the delivery limit of each endpoint, created on first
// use: how many requests may be in flight to it at once, and at what
// rate they may start.
//
// With Adaptive on, the concurrency limit follows the endpoint (additive
// increase, multiplicative decrease, as TCP's congestion window does): it
// starts at the ceiling, halves when a request shows overload (an HTTP
// 429 or 503, a timeout: handlers.IsOverloaded), at most once per round
// of requests started before the previous cut, and grows by one for
// every limit's worth of successes, back up to the ceiling. An
// overloaded request that was the n-th in flight also caps the limit at
// n-1 for ProbeAfter, so that an endpoint that takes 20 requests
// at once gets 20, not a sawtooth that crosses 20 again and again. An
// overload answer with a Retry-After also halts new requests to the
// endpoint for that long. A healthy endpoint never sees a limit below
// the ceiling.
//
// It is a prometheus.Collector of millrace_endpoint_concurrency_limit,
// millrace_endpoint_in_flight, millrace_endpoint_rate_limit and
// millrace_endpoint_throttled_total, each by endpoint. Safe for
// concurrent use.
type Limits struct {
	cfg LimitConfig

	limitDesc, inflightDesc, rateDesc, throttledDesc *prometheus.Desc

	mu sync.Mutex
	m  map[string]*Limit
}

var _ prometheus.Collector = (*Limits)(nil)

// NewLimits returns an empty set.
func NewLimits(cfg LimitConfig) *Limits {
	if cfg.MaxConcurrency <= 0 {
		cfg.MaxConcurrency = 64
	}
	if cfg.ProbeAfter <= 0 {
		cfg.ProbeAfter = 30 * time.Second
	}
	l := []string{"endpoint"}
	return &Limits{
		cfg: cfg, m: map[string]*Limit{},
		limitDesc: prometheus.NewDesc("millrace_endpoint_concurrency_limit",
			"Requests that may be in flight to each action endpoint at once: the ceiling, or less after the endpoint showed overload.", l, nil),
		inflightDesc: prometheus.NewDesc("millrace_endpoint_in_flight",
			"Requests in flight to each action endpoint.", l, nil),
		rateDesc: prometheus.NewDesc("millrace_endpoint_rate_limit",
			"Configured requests per second of each action endpoint that has a rate (delivery.endpoints).", l, nil),
		throttledDesc: prometheus.NewDesc("millrace_endpoint_throttled_total",
			"Requests that waited for their endpoint's limit, its rate or its Retry-After before they started.", l, nil),
	}
}

// Get returns the limit of endpoint, creating it.
func (ls *Limits) Get(endpoint string) *Limit {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l, ok := ls.m[endpoint]
	if !ok {
		ceiling := ls.cfg.MaxConcurrency
		o := ls.cfg.Endpoints[endpoint]
		if o.MaxConcurrency > 0 {
			ceiling = o.MaxConcurrency
		}
		l = &Limit{ceiling: float64(ceiling), limit: float64(ceiling), cap: float64(ceiling),
			adaptive: ls.cfg.Adaptive, probeAfter: ls.cfg.ProbeAfter}
		if o.Rate > 0 {
			l.rate = rate.NewLimiter(o.Rate, max(o.Burst, 1))
		}
		ls.m[endpoint] = l
	}
	return l
}

// Limit is one endpoint's delivery limit. Requests that wait for it are
// served by tenant in turn (fair.Queue): a tenant with thousands of
// events for a slow endpoint has one request started for each of
// another tenant's, not thousands ahead of it.
type Limit struct {
	ceiling    float64
	adaptive   bool
	probeAfter time.Duration
	rate       *rate.Limiter // nil: no rate

	mu        sync.Mutex
	limit     float64
	cap       float64 // the limit grows no higher; below ceiling until capSet+capHold
	capSet    time.Time
	inflight  int
	round     uint64    // rises at each cut; a request remembers the round it started in
	pause     time.Time // no request starts before it (Retry-After)
	unpause   *time.Timer
	waiting   fair.Queue[*waiter]
	throttled uint64
}

// waiter is a request waiting for its turn; ticket is set before
// granted closes.
type waiter struct {
	granted chan struct{}
	ticket  Ticket
}

// Ticket is a started request; Done ends it.
type Ticket struct {
	l       *Limit
	round   uint64
	started int // requests in flight when it started, itself included
}

// Acquire waits until a request of tenant may start to the endpoint (a
// slot under the limit, past any Retry-After pause, and a token of its
// rate), or until ctx ends.
func (l *Limit) Acquire(ctx context.Context, tenant string) (Ticket, error) {
	l.mu.Lock()
	if l.waiting.Len() == 0 && l.mayStart(time.Now()) {
		t := l.start()
		l.mu.Unlock()
		return l.paced(ctx, t, false)
	}
	w := &waiter{granted: make(chan struct{})}
	l.waiting.Push(tenant, w)
	l.throttled++
	l.grant() // arms the end of a pause
	l.mu.Unlock()
	select {
	case <-w.granted:
		return l.paced(ctx, w.ticket, true)
	case <-ctx.Done():
	}
	l.mu.Lock()
	queued := l.waiting.Remove(tenant, w)
	l.mu.Unlock()
	if !queued {
		w.ticket.release(nil, false) // granted as it gave up
	}
	return Ticket{}, ctx.Err()
}

// mayStart reports whether a request may start now, bar its rate.
func (l *Limit) mayStart(now time.Time) bool {
	return !now.Before(l.pause) && l.inflight < max(int(l.limit), 1)
}

func (l *Limit) start() Ticket {
	l.inflight++
	return Ticket{l: l, round: l.round, started: l.inflight}
}

// grant starts the waiting requests that may start, in their tenants'
// turns; while a pause holds them, a timer calls it again at its end.
func (l *Limit) grant() {
	now := time.Now()
	for l.waiting.Len() > 0 && l.mayStart(now) {
		w, _ := l.waiting.Pop()
		w.ticket = l.start()
		close(w.granted)
	}
	if l.waiting.Len() > 0 && now.Before(l.pause) && l.unpause == nil {
		l.unpause = time.AfterFunc(l.pause.Sub(now), func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.unpause = nil
			l.grant()
		})
	}
}

// paced waits for t's token of the endpoint's rate, if it has one.
func (l *Limit) paced(ctx context.Context, t Ticket, waited bool) (Ticket, error) {
	if l.rate == nil {
		return t, nil
	}
	r := l.rate.Reserve()
	if r.Delay() <= 0 {
		return t, nil
	}
	if !waited {
		l.mu.Lock()
		l.throttled++
		l.mu.Unlock()
	}
	if err := Sleep(ctx, r.Delay()); err != nil {
		r.Cancel()
		t.release(nil, false)
		return Ticket{}, err
	}
	return t, nil
}

// Done ends the request with its outcome, which moves an adaptive limit.
// The zero Ticket's Done does nothing.
func (t Ticket) Done(err error) { t.release(err, true) }

// Cancel ends a request that did not run (its breaker was open): it
// frees the slot and says nothing of the endpoint.
func (t Ticket) Cancel() { t.release(nil, false) }

func (t Ticket) release(err error, ran bool) {
	l := t.l
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inflight--
	switch {
	case !ran:
	case handlers.IsOverloaded(err):
		if l.adaptive {
			if t.round == l.round {
				// One cut per round: the requests that were in flight
				// together with this one would otherwise halve it again
				// for the same overload.
				l.limit = math.Max(1, l.limit/2)
				l.round++
			}
			// The endpoint refused the n-th request in flight: n is
			// the larger of the count when it started and now (requests
			// reach the endpoint in another order than they start).
			n := max(t.started, l.inflight+1)
			l.cap = math.Max(1, math.Min(l.cap, float64(n-1)))
			l.capSet = time.Now()
			l.limit = math.Min(l.limit, l.cap)
		}
		if d := min(handlers.RetryAfter(err), maxRetryAfterPause); d > 0 {
			if until := time.Now().Add(d); until.After(l.pause) {
				l.pause = until
			}
		}
	case err == nil && l.adaptive && l.limit < l.ceiling:
		if l.cap < l.ceiling && time.Since(l.capSet) > l.probeAfter {
			l.cap = l.ceiling
		}
		l.limit = math.Min(l.cap, l.limit+1/l.limit)
	}
	l.grant()
}

// Waiting is the number of requests waiting to start.
func (l *Limit) Waiting() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waiting.Len()
}

// State returns the endpoint's current concurrency limit and requests in
// flight.
func (l *Limit) State() (limit, inflight int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return max(int(l.limit), 1), l.inflight
}

// Describe implements prometheus.Collector.
func (ls *Limits) Describe(ch chan<- *prometheus.Desc) {
	ch <- ls.limitDesc
	ch <- ls.inflightDesc
	ch <- ls.rateDesc
	ch <- ls.throttledDesc
}

// Collect implements prometheus.Collector.
func (ls *Limits) Collect(ch chan<- prometheus.Metric) {
	ls.mu.Lock()
	names := make([]string, 0, len(ls.m))
	for k := range ls.m {
		names = append(names, k)
	}
	sort.Strings(names)
	limits := make([]*Limit, len(names))
	for i, k := range names {
		limits[i] = ls.m[k]
	}
	ls.mu.Unlock()
	for i, l := range limits {
		l.mu.Lock()
		limit, inflight, throttled := max(int(l.limit), 1), l.inflight, l.throttled
		l.mu.Unlock()
		ch <- prometheus.MustNewConstMetric(ls.limitDesc, prometheus.GaugeValue, float64(limit), names[i])
		ch <- prometheus.MustNewConstMetric(ls.inflightDesc, prometheus.GaugeValue, float64(inflight), names[i])
		ch <- prometheus.MustNewConstMetric(ls.throttledDesc, prometheus.CounterValue, float64(throttled), names[i])
		if l.rate != nil {
			ch <- prometheus.MustNewConstMetric(ls.rateDesc, prometheus.GaugeValue, float64(l.rate.Limit()), names[i])
		}
	}
}
