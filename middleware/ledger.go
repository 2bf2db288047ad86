package middleware

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/millrace/millrace/stores"
)

// LedgerConfig tunes a Ledger.
type LedgerConfig struct {
	// Window is how long a handled event stays a duplicate (dedup.window).
	// Default 5m.
	Window time.Duration
	// TTL is how long an action's success is remembered (cache.ttl).
	// Default 60s.
	TTL time.Duration
	// Lease is how long an in-flight claim lasts without renewal; the
	// claim is renewed every Lease/3 while the observer runs, so it runs
	// out only when its process died. Default 30s.
	Lease time.Duration
	// InFlightWait bounds how long Begin waits for a copy of the event
	// that is in flight elsewhere before it gives up with ErrInFlight.
	// Default: Lease.
	InFlightWait time.Duration
	// StoreTimeout bounds each store call, so that a hanging store fails
	// open quickly. Default 2s.
	StoreTimeout time.Duration
	// WarnEvery rate-limits the warning logged when a store fails.
	// Default 10s.
	WarnEvery time.Duration
}

// SetDefaults fills the defaults.
func (c *LedgerConfig) SetDefaults() {
	if c.Window == 0 {
		c.Window = 5 * time.Minute
	}
	if c.TTL == 0 {
		c.TTL = 60 * time.Second
	}
	if c.Lease == 0 {
		c.Lease = 30 * time.Second
	}
	if c.InFlightWait == 0 {
		c.InFlightWait = c.Lease
	}
	if c.StoreTimeout == 0 {
		c.StoreTimeout = 2 * time.Second
	}
	if c.WarnEvery == 0 {
		c.WarnEvery = 10 * time.Second
	}
}

// ErrInFlight is returned by Ledger.Begin when the same event and
// observer stayed in flight elsewhere for LedgerConfig.InFlightWait: the
// caller must nack the message with a delay, not drop it.
var ErrInFlight = errors.New("event still in flight in another delivery")

// Ledger is the effect ledger of the observer handler: the dedup store
// and the result cache, with the rules that make effects happen once
// without losing any.
//
//   - A run claims (event, observer) before it starts, commits the claim
//     after it succeeded and releases it after it failed, so that a
//     redelivery of a failed event runs again.
//   - A duplicate of a handled event is skipped; a duplicate of an event
//     in flight elsewhere waits, since that copy may still fail.
//   - Each action's success is stored at once, so that a retry after a
//     partial failure skips the actions that already took effect.
//   - A store that fails does not stop events (fail open): the event runs
//     without dedup or cache, the error counters rise and a warning is
//     logged at most once per WarnEvery.
//
// A nil store turns its half off. Safe for concurrent use.
type Ledger struct {
	dedup stores.DedupStore
	cache stores.ResultCache
	both  stores.ReserveLooker
	// local: every store lives in this process (stores.InProcess), so
	// its calls get no deadline.
	local  bool
	cfg    LedgerConfig
	m      *Metrics
	logger *slog.Logger

	dedupWarn, cacheWarn warnLimiter

	// counters holds each observer's dedup and cache counters, resolved
	// once (see countersOf).
	countersMu sync.RWMutex
	counters   map[string]*ledgerCounters

	// ends hands out the contexts of the calls to a store across the
	// network, see shared.
	ends atomic.Pointer[sharedDeadline]

	// renewing holds the claims whose lease is renewed (every Lease/3,
	// by one goroutine for all of them, see renew).
	renewing renewals
}

// renewals is the set of open claims of a ledger, renewed by one sweep.
// A timer per claim cost an allocation or two and a timer-heap insert
// and delete per event, for a renewal that almost never runs: most
// claims end within milliseconds, long before their first renewal.
type renewals struct {
	mu      sync.Mutex
	claims  map[*Claim]time.Time // claim → when it was taken
	running bool                 // the sweep goroutine runs
}

// NewLedger returns a ledger over the stores. When dedup and cache are
// the same value and it implements stores.ReserveLooker, Begin asks it both
// questions in one round trip. m may be nil (unregistered metrics);
// logger nil discards.
func NewLedger(dedup stores.DedupStore, cache stores.ResultCache, cfg LedgerConfig, m *Metrics, logger *slog.Logger) *Ledger {
	cfg.SetDefaults()
	if m == nil {
		m = NewMetrics()
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &Ledger{dedup: dedup, cache: cache, cfg: cfg, m: m, logger: logger}
	if dedup != nil && cache != nil && any(dedup) == any(cache) {
		l.both, _ = dedup.(stores.ReserveLooker)
	}
	l.dedupWarn.every, l.cacheWarn.every = cfg.WarnEvery, cfg.WarnEvery
	l.local = inProcess(dedup) && inProcess(cache)
	return l
}

func inProcess(s any) bool {
	if s == nil {
		return true // no store: no call
	}
	p, ok := s.(stores.InProcess)
	return ok && p.InProcess()
}

// storeCtx bounds one store call by StoreTimeout, so that a hanging
// store fails open quickly. A store in this process cannot hang, and
// its calls get ctx as it is: a deadline (a context and a timer) for
// each of its two or three calls per event was a fifth of the router's
// allocations. A store across the network gets a shared context (see
// shared), which does not end with ctx: a Begin whose event's context
// ends meanwhile returns when the store answers, within StoreTimeout,
// and a claim it took is released when the run fails.
func (l *Ledger) storeCtx(ctx context.Context) context.Context {
	if l.local {
		return ctx
	}
	return l.shared()
}

// ledgerCounters are one observer's series of Metrics.
type ledgerCounters struct {
	dedupMisses, dedupHits, dedupWaits prometheus.Counter
	cacheHits, cacheMisses             prometheus.Counter
}

// countersOf returns the observer's counters. WithLabelValues hashes and
// checks its labels on every call: two or three times per event.
func (l *Ledger) countersOf(observer string) *ledgerCounters {
	l.countersMu.RLock()
	c := l.counters[observer]
	l.countersMu.RUnlock()
	if c != nil {
		return c
	}
	l.countersMu.Lock()
	defer l.countersMu.Unlock()
	if c = l.counters[observer]; c == nil {
		c = &ledgerCounters{
			dedupMisses: l.m.DedupMisses.WithLabelValues(observer),
			dedupHits:   l.m.DedupHits.WithLabelValues(observer),
			dedupWaits:  l.m.DedupWaits.WithLabelValues(observer),
			cacheHits:   l.m.CacheHits.WithLabelValues(observer),
			cacheMisses: l.m.CacheMisses.WithLabelValues(observer),
		}
		if l.counters == nil {
			l.counters = map[string]*ledgerCounters{}
		}
		l.counters[observer] = c
	}
	return c
}

// sharedDeadline is a context that ends at deadline, handed to the calls
// made until until.
type sharedDeadline struct {
	ctx   context.Context
	until time.Time
}

// endSlots is how many shared contexts shared makes per StoreTimeout: a
// call's deadline comes StoreTimeout to StoreTimeout × (1 + 1/endSlots)
// after it starts.
const endSlots = 64

// endCtx is storeCtx for the calls that run whatever became of ctx
// (Commit, Release, Store).
func (l *Ledger) endCtx(ctx context.Context) context.Context {
	if l.local {
		return context.WithoutCancel(ctx)
	}
	return l.shared()
}

// shared bounds the calls to a store across the network by StoreTimeout
// without a context and a timer of their own: the calls made within the
// same StoreTimeout/endSlots share one context, which ends StoreTimeout
// after the last of them may start. A context of their own cost each
// call a timer's start and stop and, for Begin's, a registration with
// the event's context: two or three per event, 7 % of the peer job's
// CPU. The shared context carries none of the callers' values; no store
// reads any.
func (l *Ledger) shared() context.Context {
	now := time.Now()
	if d := l.ends.Load(); d != nil && now.Before(d.until) {
		return d.ctx
	}
	slot := l.cfg.StoreTimeout / endSlots
	// Nothing cancels it before its deadline: calls may still be using
	// it, and its timer releases it then.
	dctx, cancel := context.WithDeadline(context.Background(), now.Add(l.cfg.StoreTimeout+slot))
	_ = cancel
	d := &sharedDeadline{ctx: dctx, until: now.Add(slot)}
	l.ends.Store(d)
	return d.ctx
}

// Claim is one observer's run on one event, from Begin to Commit or
// Release. Its methods are safe for concurrent use by the observer's
// actions.
type Claim struct {
	l         *Ledger
	observer  string
	key       string
	owner     string
	held      bool // the store holds our in-flight lease
	duplicate bool
	cacheKeys []string
	hits      []bool

	mu    sync.Mutex // held during a lease renewal, so that end waits for it
	ended bool
	// deferred is the action whose success was not stored yet (see
	// Succeeded); -1 when none.
	deferred int
}

// Begin claims eventID for observer and looks up which of its actions
// (given by their config hashes, in order) already succeeded for it.
//
// When the event is in flight elsewhere, Begin polls until that copy
// commits (the claim is then a duplicate), releases (the claim is then
// ours) or its lease runs out; it returns ErrInFlight after
// InFlightWait, or ctx's error. Store failures never make Begin fail:
// it returns a claim that runs everything.
func (l *Ledger) Begin(ctx context.Context, eventID, observer string, actionHashes []string) (*Claim, error) {
	c := &Claim{l: l, observer: observer, hits: make([]bool, len(actionHashes)), deferred: -1}
	if l.cache != nil && len(actionHashes) > 0 {
		c.cacheKeys = stores.CacheKeys(eventID, observer, actionHashes)
	}
	if l.dedup == nil {
		c.lookup(ctx)
		return c, nil
	}
	c.key, c.owner = stores.DedupKey(eventID, observer), newOwner()
	deadline := time.Now().Add(l.cfg.InFlightWait)
	poll := 20 * time.Millisecond
	waited := false
	for {
		res, looked, err := c.reserve(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			l.dedupFailed(err)
			if !looked {
				c.lookup(ctx)
			}
			return c, nil
		}
		switch res {
		case stores.Claimed:
			l.countersOf(observer).dedupMisses.Inc()
			c.held = true
			if !looked {
				c.lookup(ctx)
			}
			c.startRenewal()
			return c, nil
		case stores.Done:
			l.countersOf(observer).dedupHits.Inc()
			c.duplicate = true
			c.ended = true
			return c, nil
		}
		if !waited {
			waited = true
			l.countersOf(observer).dedupWaits.Inc()
		}
		if time.Now().After(deadline) {
			return nil, ErrInFlight
		}
		if err := Sleep(ctx, poll); err != nil {
			return nil, err
		}
		poll = min(2*poll, 500*time.Millisecond)
	}
}

// reserve asks the dedup store, and the cache in the same round trip
// when the store can; looked reports whether the hits are known.
func (c *Claim) reserve(ctx context.Context) (res stores.Reservation, looked bool, err error) {
	l := c.l
	sctx := l.storeCtx(ctx)
	if l.both != nil && len(c.cacheKeys) > 0 {
		r, err := l.both.ReserveLookup(sctx, c.key, c.owner, l.cfg.Lease, c.cacheKeys)
		if err != nil {
			return 0, false, err
		}
		if r.ReserveErr != nil {
			// Fail open on the dedup half; the cache half may still hold.
			c.applyHits(r.Hits, r.LookupErr)
			return 0, true, r.ReserveErr
		}
		if r.Reservation == stores.Claimed {
			c.applyHits(r.Hits, r.LookupErr)
		}
		return r.Reservation, true, nil
	}
	res, err = l.dedup.Reserve(sctx, c.key, c.owner, l.cfg.Lease)
	return res, false, err
}

func (c *Claim) lookup(ctx context.Context) {
	if len(c.cacheKeys) == 0 {
		return
	}
	hits, err := c.l.cache.Lookup(c.l.storeCtx(ctx), c.cacheKeys...)
	c.applyHits(hits, err)
}

func (c *Claim) applyHits(hits []bool, err error) {
	if len(c.cacheKeys) == 0 {
		return
	}
	if err == nil && len(hits) != len(c.cacheKeys) {
		err = errors.New("result cache: wrong number of answers")
	}
	if err != nil {
		c.l.cacheFailed(err)
		return
	}
	m := c.l.countersOf(c.observer)
	for i, h := range hits {
		c.hits[i] = h
		if h {
			m.cacheHits.Inc()
		} else {
			m.cacheMisses.Inc()
		}
	}
}

// Duplicate reports whether the event was already handled by the
// observer: the run must be skipped (and the message acked).
func (c *Claim) Duplicate() bool { return c.duplicate }

// Cached reports whether action i already succeeded for the event.
func (c *Claim) Cached(i int) bool { return i >= 0 && i < len(c.hits) && c.hits[i] }

// Succeeded records that action i succeeded, for the cache TTL. It
// runs even when ctx was cancelled meanwhile: the effect happened.
//
// When the claim holds the dedup lease and the observer has one action,
// the store is put off: Commit follows at once and records the event as
// handled, which makes the cache entry redundant (one round trip less
// per event); Release stores it, so a redelivery still skips the action.
func (c *Claim) Succeeded(ctx context.Context, i int) {
	if i < 0 || i >= len(c.cacheKeys) {
		return
	}
	if c.held && len(c.cacheKeys) == 1 {
		c.mu.Lock()
		c.deferred = i
		c.mu.Unlock()
		return
	}
	c.store(ctx, i)
}

func (c *Claim) store(ctx context.Context, i int) {
	if err := c.l.cache.Store(c.l.endCtx(ctx), c.cacheKeys[i], c.l.cfg.TTL); err != nil {
		c.l.cacheFailed(err)
	}
}

// Commit marks the event handled by the observer for the window. Call
// it once, after every action succeeded. It runs even when ctx was
// cancelled meanwhile.
func (c *Claim) Commit(ctx context.Context) {
	if !c.end() || c.l.dedup == nil {
		return
	}
	// Also after a failed Reserve (fail open): the store may be back,
	// and the mark keeps later duplicates out.
	err := c.l.dedup.Commit(c.l.endCtx(ctx), c.key, c.owner, c.l.cfg.Window)
	switch {
	case errors.Is(err, stores.ErrLeaseLost):
		c.l.logger.WarnContext(ctx, "dedup: the claim expired while the observer ran and another delivery holds it; it may run the observer again",
			"observer", c.observer, "key", c.key)
	case err != nil:
		c.l.dedupFailed(err)
	}
}

// Release frees the claim after a failure, so that a redelivery or a
// waiting duplicate runs the observer. Call it once instead of Commit.
func (c *Claim) Release(ctx context.Context) {
	if !c.end() || !c.held {
		return
	}
	c.mu.Lock()
	deferred := c.deferred
	c.mu.Unlock()
	if deferred >= 0 {
		c.store(ctx, deferred)
	}
	if err := c.l.dedup.Release(c.l.endCtx(ctx), c.key, c.owner); err != nil {
		c.l.dedupFailed(err)
	}
}

// end stops the lease renewal, waiting for one in progress, and reports
// whether the claim was still open.
func (c *Claim) end() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return false
	}
	c.ended = true
	if c.held {
		c.stopRenewal()
	}
	return true
}

func (c *Claim) startRenewal() {
	r := &c.l.renewing
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.claims == nil {
		r.claims = map[*Claim]time.Time{}
	}
	r.claims[c] = time.Now()
	if !r.running {
		r.running = true
		go c.l.renew()
	}
}

func (c *Claim) stopRenewal() {
	r := &c.l.renewing
	r.mu.Lock()
	delete(r.claims, c)
	r.mu.Unlock()
}

// renew extends, every Lease/3, the lease of each claim held for half
// that or longer, until no claim is open.
func (l *Ledger) renew() {
	every := l.cfg.Lease / 3
	t := time.NewTicker(every)
	defer t.Stop()
	var due []*Claim
	for range t.C {
		r := &l.renewing
		r.mu.Lock()
		if len(r.claims) == 0 {
			r.running = false
			r.mu.Unlock()
			return
		}
		// Held for half a period: renewed at most 1.5 periods (half the
		// lease) after it was taken, as the lease still has time to run.
		before := time.Now().Add(-every / 2)
		for c, since := range r.claims {
			if since.Before(before) {
				due = append(due, c)
			}
		}
		r.mu.Unlock()
		var wg sync.WaitGroup
		for _, c := range due {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.extend()
			}()
		}
		wg.Wait()
		clear(due)
		due = due[:0]
	}
}

// extend renews the claim's lease unless it ended meanwhile; end waits
// for a renewal in progress.
func (c *Claim) extend() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.l.cfg.StoreTimeout)
	err := c.l.dedup.Extend(ctx, c.key, c.owner, c.l.cfg.Lease)
	cancel()
	switch {
	case errors.Is(err, stores.ErrLeaseLost):
		c.l.logger.Warn("dedup: lost the claim of a running observer; another delivery may run it too",
			"observer", c.observer, "key", c.key)
		c.stopRenewal() // nothing left to renew; Commit will say so again

	case err != nil:
		c.l.dedupFailed(err)
	}
}

func (l *Ledger) dedupFailed(err error) {
	l.m.DedupErrors.Inc()
	if ok, suppressed := l.dedupWarn.allow(time.Now()); ok {
		l.logger.Warn("dedup store failing; events are processed without dedup (fail open)",
			"err", err, "suppressed", suppressed)
	}
}

func (l *Ledger) cacheFailed(err error) {
	l.m.CacheErrors.Inc()
	if ok, suppressed := l.cacheWarn.allow(time.Now()); ok {
		l.logger.Warn("result cache failing; actions run without it (fail open)",
			"err", err, "suppressed", suppressed)
	}
}

// warnLimiter lets one warning through per period and counts the rest.
type warnLimiter struct {
	every time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (w *warnLimiter) allow(now time.Time) (bool, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.last.IsZero() && now.Sub(w.last) < w.every {
		w.suppressed++
		return false, 0
	}
	n := w.suppressed
	w.last, w.suppressed = now, 0
	return true, n
}

// newOwner returns a random token naming one run.
func newOwner() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail
	return hex.EncodeToString(b[:])
}
