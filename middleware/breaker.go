package middleware

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// BreakerConfig tunes every circuit breaker of a Breakers.
type BreakerConfig struct {
	// Failures is the number of consecutive failures that opens a
	// breaker. Default 5.
	Failures uint32
	// OpenFor is how long a breaker stays open before it lets one trial
	// request through (half-open). Default 30s.
	OpenFor time.Duration
	// HalfOpenRequests is the number of trial requests while half-open.
	// Default 1.
	HalfOpenRequests uint32
}

// SetDefaults fills the defaults.
func (c *BreakerConfig) SetDefaults() {
	if c.Failures == 0 {
		c.Failures = 5
	}
	if c.OpenFor == 0 {
		c.OpenFor = 30 * time.Second
	}
	if c.HalfOpenRequests == 0 {
		c.HalfOpenRequests = 1
	}
}

// BreakerKeyer is implemented by an action that knows which endpoint it
// calls, so that every action of the process calling one endpoint shares
// one breaker: the built-in ones name a webhook's or Slack's host
// (scheme://host[:port]), the SMTP server, the SQL database or the Redis
// server (see handlers.URLEndpoint). The key labels
// millrace_breaker_state, so it never holds credentials; "" gives the
// action a breaker of its own, keyed by observer and action.
type BreakerKeyer interface {
	BreakerKey() string
}

// ErrBreakerOpen is returned by Breakers.Do, without running the call,
// while the breaker is open or half-open and busy. The caller waits and
// tries again: it is no reason to give up on the event.
var ErrBreakerOpen = errors.New("circuit breaker open")

// Breakers holds one circuit breaker (github.com/sony/gobreaker/v2) per
// endpoint key, created on first use. It is a prometheus.Collector of
// millrace_breaker_state{breaker}: 0 closed, 1 half-open, 2 open, read
// at scrape time so that an open breaker whose time is up shows as
// half-open. Safe for concurrent use.
type Breakers struct {
	cfg       BreakerConfig
	isFailure func(error) bool
	desc      *prometheus.Desc

	mu sync.Mutex
	m  map[string]*gobreaker.CircuitBreaker[struct{}]
}

var _ prometheus.Collector = (*Breakers)(nil)

// NewBreakers returns an empty set. isFailure decides which errors of a
// call count against its endpoint; nil counts every error. Errors it
// rejects (e.g. a 4xx, which shows the endpoint is up) count as
// successes.
func NewBreakers(cfg BreakerConfig, isFailure func(error) bool) *Breakers {
	cfg.SetDefaults()
	if isFailure == nil {
		isFailure = func(err error) bool { return err != nil }
	}
	return &Breakers{
		cfg: cfg, isFailure: isFailure, m: map[string]*gobreaker.CircuitBreaker[struct{}]{},
		desc: prometheus.NewDesc("millrace_breaker_state",
			"State of each action endpoint's circuit breaker: 0 closed, 1 half-open, 2 open.", []string{"breaker"}, nil),
	}
}

func (b *Breakers) get(key string) *gobreaker.CircuitBreaker[struct{}] {
	b.mu.Lock()
	defer b.mu.Unlock()
	cb, ok := b.m[key]
	if !ok {
		cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
			Name:        key,
			MaxRequests: b.cfg.HalfOpenRequests,
			Timeout:     b.cfg.OpenFor,
			ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= b.cfg.Failures },
			IsSuccessful: func(err error) bool {
				return err == nil || !b.isFailure(err)
			},
			// A call cut short by our own shutdown says nothing about
			// the endpoint.
			IsExcluded: func(err error) bool { return errors.Is(err, context.Canceled) },
		})
		b.m[key] = cb
	}
	return cb
}

// Do runs fn through key's breaker. While the breaker is open it returns
// an error wrapping ErrBreakerOpen and does not call fn.
func (b *Breakers) Do(key string, fn func() error) error {
	_, err := b.get(key).Execute(func() (struct{}, error) { return struct{}{}, fn() })
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		return fmt.Errorf("%w: %s: %w", ErrBreakerOpen, key, err)
	}
	return err
}

// State returns key's state: 0 closed (also for an unknown key),
// 1 half-open, 2 open.
func (b *Breakers) State(key string) int {
	b.mu.Lock()
	cb, ok := b.m[key]
	b.mu.Unlock()
	if !ok {
		return 0
	}
	return stateValue(cb.State())
}

func stateValue(s gobreaker.State) int {
	switch s {
	case gobreaker.StateHalfOpen:
		return 1
	case gobreaker.StateOpen:
		return 2
	}
	return 0
}

// Describe implements prometheus.Collector.
func (b *Breakers) Describe(ch chan<- *prometheus.Desc) { ch <- b.desc }

// Collect implements prometheus.Collector.
func (b *Breakers) Collect(ch chan<- prometheus.Metric) {
	b.mu.Lock()
	keys := make([]string, 0, len(b.m))
	for k := range b.m {
		keys = append(keys, k)
	}
	cbs := make([]*gobreaker.CircuitBreaker[struct{}], len(keys))
	sort.Strings(keys)
	for i, k := range keys {
		cbs[i] = b.m[k]
	}
	b.mu.Unlock()
	for i, cb := range cbs {
		ch <- prometheus.MustNewConstMetric(b.desc, prometheus.GaugeValue, float64(stateValue(cb.State())), keys[i])
	}
}
