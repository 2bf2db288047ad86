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
	// FirstOpenFor is how long a breaker stays open the first time
	// before it lets trial requests through (half-open); each failed
	// trial doubles it, up to OpenFor, and a close starts over. Default
	// 1s, and never above OpenFor.
	FirstOpenFor time.Duration
	// OpenFor is the longest a breaker stays open before it lets trial
	// requests through. Default 30s.
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
		Window: c.Window.D(), FirstOpenFor: c.FirstOpenInterval.D(), OpenFor: c.OpenInterval.D(), HalfOpenRequests: c.HalfOpenProbes,
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
	if c.FirstOpenFor == 0 {
		c.FirstOpenFor = time.Second
	}
	c.FirstOpenFor = min(c.FirstOpenFor, c.OpenFor)
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
		// The first interval: gobreaker's is fixed, so the doubling is
		// breaker.refuseFor's, in front of it.
		Timeout:     c.FirstOpenFor,
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

// OpenError is the error of a call an open breaker refused: it wraps
// ErrBreakerOpen and says how long until the breaker lets a trial call
// through, so that the caller comes back then rather than on a fixed
// beat (BreakerWait).
type OpenError struct {
	Key string
	// Wait is how long until the breaker may let a trial through: the
	// rest of its open interval, or trialWait while a trial runs.
	Wait time.Duration
}

func (e *OpenError) Error() string {
	return fmt.Sprintf("%s: %s: trial in %s", ErrBreakerOpen, e.Key, e.Wait.Round(time.Millisecond))
}

// Is makes errors.Is(err, ErrBreakerOpen) hold.
func (e *OpenError) Is(target error) bool { return target == ErrBreakerOpen }

// BreakerWait is the wait an OpenError in err's chain asks for, or 0.
func BreakerWait(err error) time.Duration {
	var oe *OpenError
	if errors.As(err, &oe) {
		return oe.Wait
	}
	return 0
}

// trialWait is what a call refused while a half-open breaker's trials
// run is told to wait: trials take one call's time, and once one
// succeeds everything waiting should go at once.
const trialWait = 250 * time.Millisecond

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
	m    map[string]*breaker
	keys map[string]keyConfig // settings of their own, by key
}

// breaker is one endpoint's gobreaker, whose open interval is fixed (the
// first one), and the doubling in front of it: refuseFor refuses calls
// until the current interval is over, then gobreaker, long past its own
// interval, lets its trial calls through.
type breaker struct {
	cb          *gobreaker.CircuitBreaker[struct{}]
	first, most time.Duration

	mu    sync.Mutex // never held while calling cb: cb calls onChange under its own lock
	opens int        // openings since the breaker last closed
	until time.Time  // calls are refused before this
}

// onChange is gobreaker's OnStateChange.
func (br *breaker) onChange(_ string, _, to gobreaker.State) {
	br.mu.Lock()
	defer br.mu.Unlock()
	switch to {
	case gobreaker.StateOpen:
		d := br.first
		for i := 0; i < br.opens && d < br.most; i++ {
			d *= 2
		}
		d = min(d, br.most)
		br.opens++
		br.until = time.Now().Add(d)
	case gobreaker.StateClosed:
		br.opens, br.until = 0, time.Time{}
	}
}

// refuseFor is how long calls are still refused, or 0.
func (br *breaker) refuseFor(now time.Time) time.Duration {
	br.mu.Lock()
	defer br.mu.Unlock()
	if now.Before(br.until) {
		return br.until.Sub(now)
	}
	return 0
}

// state is the breaker's state for millrace_breaker_state and State.
func (br *breaker) state() int {
	if br.refuseFor(time.Now()) > 0 {
		return 2
	}
	return stateValue(br.cb.State())
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
		cfg: cfg, isFailure: isFailure, m: map[string]*breaker{}, keys: map[string]keyConfig{},
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

func (b *Breakers) get(key string) *breaker {
	b.mu.Lock()
	defer b.mu.Unlock()
	br, ok := b.m[key]
	if !ok {
		cfg := b.cfg
		if kc, ok := b.keys[key]; ok {
			cfg = kc.cfg
		}
		br = &breaker{first: cfg.FirstOpenFor, most: cfg.OpenFor}
		st := cfg.settings(key)
		st.IsSuccessful = func(err error) bool { return err == nil || !b.isFailure(err) }
		// A call cut short by our own shutdown says nothing about the
		// endpoint.
		st.IsExcluded = func(err error) bool { return errors.Is(err, context.Canceled) }
		st.OnStateChange = br.onChange
		br.cb = gobreaker.NewCircuitBreaker[struct{}](st)
		b.m[key] = br
	}
	return br
}

// Do runs fn through key's breaker. While the breaker is open it returns
// an *OpenError (errors.Is ErrBreakerOpen) and does not call fn.
func (b *Breakers) Do(key string, fn func() error) error {
	br := b.get(key)
	if w := br.refuseFor(time.Now()); w > 0 {
		return &OpenError{Key: key, Wait: w}
	}
	_, err := br.cb.Execute(func() (struct{}, error) { return struct{}{}, fn() })
	switch {
	case errors.Is(err, gobreaker.ErrOpenState):
		return &OpenError{Key: key, Wait: max(br.refuseFor(time.Now()), trialWait)}
	case errors.Is(err, gobreaker.ErrTooManyRequests):
		return &OpenError{Key: key, Wait: trialWait}
	}
	return err
}

// State returns key's state: 0 closed (also for an unknown key),
// 1 half-open, 2 open.
func (b *Breakers) State(key string) int {
	b.mu.Lock()
	br, ok := b.m[key]
	b.mu.Unlock()
	if !ok {
		return 0
	}
	return br.state()
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
	brs := make([]*breaker, len(keys))
	sort.Strings(keys)
	for i, k := range keys {
		brs[i] = b.m[k]
	}
	b.mu.Unlock()
	for i, br := range brs {
		ch <- prometheus.MustNewConstMetric(b.desc, prometheus.GaugeValue, float64(br.state()), keys[i])
	}
}
