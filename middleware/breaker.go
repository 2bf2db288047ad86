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

	"github.com/millrace/millrace/config"
)

// BreakerConfig tunes a circuit breaker. A breaker opens when either
// rule says so: Failures consecutive failures, or a FailureRatio of the
// calls of the last Window (once it holds MinRequests calls).
type BreakerConfig struct {
	// Failures is the number of consecutive failures that opens a
	// breaker; 0 turns the rule off when FailureRatio is set. Default 5.
	Failures uint32
	// FailureRatio, above 0, opens a breaker once this share of the
	// calls in Window failed. Default 0 (off).
	FailureRatio float64
	// MinRequests is how many calls Window needs before FailureRatio
	// applies. Default 10.
	MinRequests uint32
	// Window is the rolling window of FailureRatio. Default 60s.
	Window time.Duration
	// OpenFor is how long a breaker stays open before it lets trial
	// requests through (half-open). Default 30s.
	OpenFor time.Duration
	// HalfOpenRequests is the number of trial requests while half-open.
	// Default 1.
	HalfOpenRequests uint32
}

// BreakerConfigOf converts a config section ([breaker], or an action's
// override merged onto it) to a BreakerConfig.
func BreakerConfigOf(c config.Breaker) BreakerConfig {
	return BreakerConfig{
		Failures: c.ConsecutiveFailures, FailureRatio: c.FailureRatio, MinRequests: c.MinRequests,
		Window: c.Window.D(), OpenFor: c.OpenInterval.D(), HalfOpenRequests: c.HalfOpenProbes,
	}
}

// SetDefaults fills the defaults.
func (c *BreakerConfig) SetDefaults() {
	if c.Failures == 0 && c.FailureRatio == 0 {
		c.Failures = 5
	}
	if c.MinRequests == 0 {
		c.MinRequests = 10
	}
	if c.Window == 0 {
		c.Window = time.Minute
	}
	if c.OpenFor == 0 {
		c.OpenFor = 30 * time.Second
	}
	if c.HalfOpenRequests == 0 {
		c.HalfOpenRequests = 1
	}
}

// readyToTrip is gobreaker's Settings.ReadyToTrip for c.
func (c BreakerConfig) readyToTrip(n gobreaker.Counts) bool {
	if c.Failures > 0 && n.ConsecutiveFailures >= c.Failures {
		return true
	}
	return c.FailureRatio > 0 && n.Requests >= c.MinRequests &&
		float64(n.TotalFailures) >= c.FailureRatio*float64(n.Requests)
}

// settings returns gobreaker's settings for c. Without FailureRatio the
// counts are never cleared while closed (Interval 0), as consecutive
// failures need no window; with it they roll over Window in ten buckets.
func (c BreakerConfig) settings(key string) gobreaker.Settings {
	st := gobreaker.Settings{
		Name:        key,
		MaxRequests: c.HalfOpenRequests,
		Timeout:     c.OpenFor,
		ReadyToTrip: c.readyToTrip,
	}
	if c.FailureRatio > 0 {
		st.Interval = c.Window
		st.BucketPeriod = max(c.Window/10, time.Millisecond)
	}
	return st
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
// endpoint key, created on first use with the key's settings (Configure)
// or the defaults. It is a prometheus.Collector of
// millrace_breaker_state{breaker}: 0 closed, 1 half-open, 2 open, read
// at scrape time so that an open breaker whose time is up shows as
// half-open. Safe for concurrent use.
type Breakers struct {
	cfg       BreakerConfig
	isFailure func(error) bool
	desc      *prometheus.Desc

	mu   sync.Mutex
	m    map[string]*gobreaker.CircuitBreaker[struct{}]
	keys map[string]keyConfig // settings of their own, by key
}

// keyConfig is a key's settings and the key path that set them.
type keyConfig struct {
	cfg  BreakerConfig
	path string
}

var _ prometheus.Collector = (*Breakers)(nil)

// NewBreakers returns an empty set. cfg is the default of every key;
// isFailure decides which errors of a call count against its endpoint;
// nil counts every error. Errors it rejects (e.g. a 4xx, which shows the
// endpoint is up) count as successes.
func NewBreakers(cfg BreakerConfig, isFailure func(error) bool) *Breakers {
	cfg.SetDefaults()
	if isFailure == nil {
		isFailure = func(err error) bool { return err != nil }
	}
	return &Breakers{
		cfg: cfg, isFailure: isFailure, m: map[string]*gobreaker.CircuitBreaker[struct{}]{}, keys: map[string]keyConfig{},
		desc: prometheus.NewDesc("millrace_breaker_state",
			"State of each action endpoint's circuit breaker: 0 closed, 1 half-open, 2 open.", []string{"breaker"}, nil),
	}
}

// Configure gives key settings of their own, set at path (an action's
// "breaker" key), before its breaker is first used. Actions that share
// an endpoint share its breaker, so a second path asking for other
// settings for the same key is an error naming both.
func (b *Breakers) Configure(key string, cfg BreakerConfig, path string) error {
	cfg.SetDefaults()
	b.mu.Lock()
	defer b.mu.Unlock()
	if old, ok := b.keys[key]; ok {
		if old.cfg != cfg {
			return fmt.Errorf("%s: the breaker of %s is already set up differently by %s; actions calling one endpoint share its breaker, so their overrides must agree",
				path, key, old.path)
		}
		return nil
	}
	if _, used := b.m[key]; used {
		return fmt.Errorf("%s: the breaker of %s is already in use", path, key)
	}
	b.keys[key] = keyConfig{cfg: cfg, path: path}
	return nil
}

func (b *Breakers) get(key string) *gobreaker.CircuitBreaker[struct{}] {
	b.mu.Lock()
	defer b.mu.Unlock()
	cb, ok := b.m[key]
	if !ok {
		cfg := b.cfg
		if kc, ok := b.keys[key]; ok {
			cfg = kc.cfg
		}
		st := cfg.settings(key)
		st.IsSuccessful = func(err error) bool { return err == nil || !b.isFailure(err) }
		// A call cut short by our own shutdown says nothing about the
		// endpoint.
		st.IsExcluded = func(err error) bool { return errors.Is(err, context.Canceled) }
		cb = gobreaker.NewCircuitBreaker[struct{}](st)
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
