package middleware

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/engine"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/stores"
	"github.com/millrace/millrace/tracing"
)

// Delays the bus waits before redelivering a message the stack could not
// settle.
const (
	// InFlightRetryDelay: the same event stayed in flight in another
	// delivery for longer than the ledger waits.
	InFlightRetryDelay = time.Second
	// DeadLetterRetryDelay: the dead-letter store refused an entry.
	DeadLetterRetryDelay = 2 * time.Second
	// MinBreakerRedeliverDelay: an action met an open breaker; the event
	// comes back when the breaker lets a trial through, and not sooner
	// than this.
	MinBreakerRedeliverDelay = 100 * time.Millisecond
	// deadLetterTimeout bounds one write to the dead-letter store.
	deadLetterTimeout = 10 * time.Second
)

// Layer is one concern of an observer's delivery stack, as Plan lists
// it and `millrace config --stack` prints it.
type Layer struct {
	// Name is one of the Layer constants.
	Name string
	// Detail says how the config set it up.
	Detail string
}

// The layers of a delivery stack, outermost first.
const (
	LayerFailure   = "failure policy"
	LayerCondition = "condition"
	LayerLedger    = "ledger"
	LayerRetry     = "retry"
	LayerActions   = "actions"
)

// Plan returns the layers of observer o's delivery, outermost first, as
// cfg asks for them: a condition layer only when o has a condition, a
// ledger only when dedup or the result cache is on. Every message-level
// layer is a Watermill message.HandlerMiddleware (Policy.Stack).
func Plan(cfg *config.Config, o config.Observer) []Layer {
	layers := []Layer{{LayerFailure, map[string]string{
		"dlq":  "dlq: a final failure goes to the dead-letter store",
		"log":  "log: a final failure is logged and the event dropped",
		"drop": "drop: a final failure drops the event",
		"park": "park: a final failure parks the entity: its later events wait with it in the dead-letter store",
	}[o.OnFailure]}}
	if o.Condition != "" {
		layers = append(layers, Layer{LayerCondition, o.Condition})
	}
	if cfg.Dedup.Enabled || cfg.Cache.Enabled {
		var parts []string
		if cfg.Dedup.Enabled {
			parts = append(parts, fmt.Sprintf("dedup window %s (%s)", cfg.Dedup.Window, storeName(cfg.Dedup.Store)))
		}
		if cfg.Cache.Enabled {
			parts = append(parts, fmt.Sprintf("result cache lookup (%s)", storeName(cfg.Cache.Store)))
		}
		layers = append(layers, Layer{LayerLedger, strings.Join(parts, ", ")})
	}
	r := o.Retry
	layers = append(layers, Layer{LayerRetry, fmt.Sprintf("%s, %d attempts, %s..%s, jitter %g; an open breaker redelivers when it lets a trial through",
		r.Backoff, r.MaxAttempts, r.Initial, r.Max, r.Jitter)})
	each := []string{}
	if cfg.Cache.Enabled {
		each = append(each, fmt.Sprintf("result cache (ttl %s)", cfg.Cache.TTL))
	}
	each = append(each, breakerPlan(cfg.Breaker), limitPlan(cfg.Delivery), fmt.Sprintf("timeout %s", o.Timeout))
	layers = append(layers, Layer{LayerActions, fmt.Sprintf("%d action(s), %d at a time, each: %s",
		len(o.Actions), o.Concurrency, strings.Join(each, " → "))})
	return layers
}

// breakerPlan describes the [breaker] defaults (an action's own
// "breaker" table may change them for its endpoint).
func breakerPlan(b config.Breaker) string {
	var rules []string
	if b.ConsecutiveFailures > 0 {
		rules = append(rules, fmt.Sprintf("%d failures in a row", b.ConsecutiveFailures))
	}
	if b.FailureRatio > 0 {
		rules = append(rules, fmt.Sprintf("%g of at least %d requests in %s", b.FailureRatio, b.MinRequests, b.Window))
	}
	if len(rules) == 0 {
		return "circuit breaker (per endpoint, never opens)"
	}
	first := min(b.FirstOpenInterval, b.OpenInterval)
	return fmt.Sprintf("circuit breaker (per endpoint: opens after %s, for %s doubling to %s)", strings.Join(rules, " or "), first, b.OpenInterval)
}

// limitPlan describes the [delivery] defaults.
func limitPlan(d config.Delivery) string {
	mode := "fixed"
	if d.Adaptive {
		mode = "adaptive"
	}
	s := fmt.Sprintf("delivery limit (per endpoint: at most %d at once, %s", d.MaxConcurrency, mode)
	if n := len(d.Endpoints); n > 0 {
		s += fmt.Sprintf("; %d endpoint(s) with their own", n)
	}
	return s + ")"
}

func storeName(s string) string {
	if s == "" {
		return "the topology's store"
	}
	return s + " store"
}

// FormatPlan renders the layers, one per line, numbered from the
// outermost.
func FormatPlan(layers []Layer) string {
	var b strings.Builder
	for i, l := range layers {
		fmt.Fprintf(&b, "  %d. %-15s %s\n", i+1, l.Name, l.Detail)
	}
	return b.String()
}

// Policy is what the delivery stacks of every observer of a process
// share.
type Policy struct {
	Config *config.Config
	// Ledger holds dedup and the result cache; nil when both are off.
	Ledger   *Ledger
	Breakers *Breakers
	// Limits bounds the requests to each action endpoint; nil: no
	// limits.
	Limits      *Limits
	DeadLetters stores.DeadLetters
	// Parks are the parked entities (on_failure = "park"); nil: none.
	Parks   *Parks
	Metrics *Metrics
	Logger  *slog.Logger
	// Tracer makes a span per observer run and per action execution;
	// nil (tracing off): none, and no layer for it in the stack.
	Tracer *tracing.Tracer
}

// Stack returns o's delivery as one message.HandlerFunc: the layers of
// Plan, each a message.HandlerMiddleware, around the run of o's actions.
// The message's context must carry the Delivery (Run does that).
func (p *Policy) Stack(o *engine.Observer) message.HandlerFunc {
	layers := Plan(p.Config, o.Config)
	h := p.actions(p.actionMetrics(o))
	for i := len(layers) - 1; i >= 0; i-- {
		var mw message.HandlerMiddleware
		switch layers[i].Name {
		case LayerFailure:
			mw = p.failurePolicy
		case LayerCondition:
			mw = condition
		case LayerLedger:
			mw = p.ledger(o)
		case LayerRetry:
			mw = p.retry
		case LayerActions:
			continue // the innermost handler
		}
		h = mw(h)
	}
	if p.Tracer != nil {
		h = p.traceObserver(o)(h)
	}
	return h
}

// failurePolicy applies the observer's on_failure to a final failure
// (a *Failure from the layers inside). Only a dead-letter write that
// fails leaves the message for a redelivery. With "park", an event of
// an entity that is parked for the observer does not run: it joins the
// group (docs/adr/0014-park-the-key.md).
func (p *Policy) failurePolicy(next message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx, d := msg.Context(), DeliveryFrom(msg.Context())
		o, ev := d.Observer, d.Event
		park := o.Config.OnFailure == "park"
		if park && !d.ParkReplay && p.Parks.Parked(o.Name, ev) {
			return nil, p.parkBehind(ctx, d)
		}
		out, err := next(msg)
		if err == nil {
			return out, nil // before errors.As, whose target escapes
		}
		var f *Failure
		if !errors.As(err, &f) {
			return out, err
		}
		attrs := []any{"observer", o.Name, "event_id", ev.ID, "action", f.Action, "reason", f.Reason,
			"attempts", f.Attempts, "err", f.Err}
		switch {
		case d.ParkReplay:
			// The entry stays the head of its group, in its place.
			d.Outcome = OutcomeParked
			return nil, f
		case o.Config.OnFailure == "log":
			d.Outcome = OutcomeLogged
			p.Logger.ErrorContext(ctx, "observer failed; event dropped (on_failure = log)", attrs...)
		case o.Config.OnFailure == "drop":
			d.Outcome = OutcomeDropped
			p.Logger.DebugContext(ctx, "observer failed; event dropped (on_failure = drop)", attrs...)
		default:
			dl := stores.DeadLetter{
				EventID: ev.ID, Observer: o.Name, Action: f.Action, Reason: f.Reason, Error: f.Err.Error(),
				Attempts: f.Attempts, FirstFailure: f.First, LastFailure: f.Last, Topic: d.Topic, Payload: d.Payload,
				Succeeded: d.succeeded(),
			}
			if park {
				dl.Key, dl.Parked = stores.ParkKey(ev.Source, ev.Entity, ev.EntityID), true
			}
			id, err := p.PutDeadLetter(ctx, dl)
			if err != nil {
				d.Outcome, d.RetryDelay = OutcomeRedeliver, DeadLetterRetryDelay
				p.Logger.ErrorContext(ctx, "observer failed and its dead letter could not be written; the event will be redelivered",
					append(attrs, "dlq_err", err)...)
				return nil, fmt.Errorf("observer %q: dead-letter write failed: %w", o.Name, err)
			}
			if park {
				p.Parks.Park(o.Name, dl.Key, ev.Key(), dl.FirstFailure)
				d.Outcome = OutcomeParked
				p.Logger.WarnContext(ctx, "observer failed; event dead-lettered and its entity parked",
					append(attrs, "dead_letter", id, "entity", dl.Key)...)
				return nil, nil
			}
			d.Outcome = OutcomeDeadLettered
			p.Logger.WarnContext(ctx, "observer failed; event dead-lettered", append(attrs, "dead_letter", id)...)
		}
		return nil, nil
	}
}

// parkBehind adds d's event to its entity's parked group without
// running it; a store that refuses the entry leaves the message for a
// redelivery, which finds the entity still parked.
func (p *Policy) parkBehind(ctx context.Context, d *Delivery) error {
	o, ev := d.Observer, d.Event
	key := stores.ParkKey(ev.Source, ev.Entity, ev.EntityID)
	now := time.Now()
	id, err := p.PutDeadLetter(ctx, stores.DeadLetter{
		EventID: ev.ID, Observer: o.Name, Reason: stores.ReasonParked, FirstFailure: now, LastFailure: now,
		Error: "not run: an earlier event of the entity failed for the observer; `millrace dlq replay --entity` runs the group in order",
		Topic: d.Topic, Payload: d.Payload, Succeeded: d.succeeded(), Key: key, Parked: true,
	})
	if err != nil {
		d.Outcome, d.RetryDelay = OutcomeRedeliver, DeadLetterRetryDelay
		p.Logger.ErrorContext(ctx, "event of a parked entity could not be added to its group; it will be redelivered",
			"observer", o.Name, "event_id", ev.ID, "entity", key, "dlq_err", err)
		return fmt.Errorf("observer %q: park: dead-letter write failed: %w", o.Name, err)
	}
	p.Parks.Park(o.Name, key, ev.Key(), now)
	d.Outcome = OutcomeParked
	p.Logger.InfoContext(ctx, "entity parked; event added to its group", "observer", o.Name, "event_id", ev.ID,
		"entity", key, "dead_letter", id)
	return nil
}

// PutDeadLetter writes an entry even when ctx was cancelled meanwhile
// (shutdown): the failure is final, and the entry decides whether the
// message may be acked.
func (p *Policy) PutDeadLetter(ctx context.Context, dl stores.DeadLetter) (string, error) {
	if p.DeadLetters == nil {
		return "", errors.New("the topology has no dead-letter store")
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deadLetterTimeout)
	defer cancel()
	return p.DeadLetters.Put(pctx, dl)
}

// condition skips an event the observer's condition refuses; a condition
// that fails to evaluate is a final failure.
func condition(next message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		d := DeliveryFrom(msg.Context())
		ok, err := d.Observer.Accepts(d.Event)
		if err != nil {
			now := time.Now()
			return nil, &Failure{Reason: stores.ReasonCondition, Err: err, Attempts: 1, First: now, Last: now}
		}
		if !ok {
			d.Outcome = OutcomeSkipped
			return nil, nil
		}
		return next(msg)
	}
}

// ledger claims (event, observer) before the run: a duplicate of a
// handled event is skipped, the actions that already succeeded are
// marked done. The claim is committed after a success and released
// after any failure, so that a redelivery runs again.
func (p *Policy) ledger(o *engine.Observer) message.HandlerMiddleware {
	hashes := actionHashes(o)
	return func(next message.HandlerFunc) message.HandlerFunc {
		return p.ledgerLayer(hashes, next)
	}
}

func (p *Policy) ledgerLayer(hashes []string, next message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx, d := msg.Context(), DeliveryFrom(msg.Context())
		o := d.Observer
		claim, err := p.Ledger.Begin(ctx, d.Event.ID, o.Name, hashes)
		if err != nil {
			if errors.Is(err, ErrInFlight) {
				d.RetryDelay = InFlightRetryDelay
			}
			return nil, fmt.Errorf("observer %q: %w", o.Name, err)
		}
		if claim.Duplicate() {
			d.Outcome = OutcomeDuplicate
			return nil, nil
		}
		d.Claim = claim
		for i := range d.Actions {
			if d.Actions[i].Done {
				continue // a replay named it (MarkSucceeded)
			}
			if claim.Cached(i) && !d.RunAll {
				d.Actions[i].Done = true
				d.CacheHits++
			} else if p.Config.Cache.Enabled {
				d.CacheMisses++
			}
		}
		out, err := next(msg)
		if err != nil {
			claim.Release(ctx)
			return out, err
		}
		claim.Commit(ctx)
		return out, nil
	}
}

// retry runs the actions until each succeeded or gave up, waiting
// between rounds as the observer's retry policy says, and turns the
// result into a success, a *Failure or a redelivery.
func (p *Policy) retry(next message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx, d := msg.Context(), DeliveryFrom(msg.Context())
		o := d.Observer
		backoff := NewBackoff(o.Config.Retry)
		for {
			_, _ = next(msg) // outcomes are in d.Actions
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("observer %q: %w", o.Name, err)
			}
			var wait, reopen time.Duration
			retries, pending, rejected := 0, false, false
			for i := range d.Actions {
				st := &d.Actions[i]
				switch {
				case st.Done, st.GaveUp:
				case st.Rejected:
					// The first breaker to let a trial through is when
					// the observer can make progress.
					if !rejected || st.RetryIn < reopen {
						reopen = st.RetryIn
					}
					rejected = true
				case st.Permanent || st.Attempts >= backoff.Attempts():
					st.GaveUp = true
				default:
					pending = true
					retries++
					wait = max(wait, backoff.Next(st.Attempts, handlers.RetryAfter(st.LastErr)))
				}
			}
			if rejected {
				// An endpoint's breaker is open: the event goes back to
				// the bus, without using an attempt (an open breaker
				// alone never dead-letters), until the breaker lets a
				// trial through; so when the endpoint is back, the
				// backlog follows the trial at once. Waiting here instead
				// would hold one of the router's in-flight slots for as
				// long as the breaker stays open, and a dead endpoint
				// would starve every other observer. The actions that
				// succeeded are kept by the ledger.
				d.RetryDelay = max(reopen, MinBreakerRedeliverDelay)
				return nil, fmt.Errorf("observer %q: %w", o.Name, ErrBreakerOpen)
			}
			if !pending {
				break
			}
			p.Logger.DebugContext(ctx, "retrying observer", "observer", o.Name, "event_id", d.Event.ID,
				"actions", retries, "wait", wait.String())
			if err := Sleep(ctx, wait); err != nil {
				return nil, fmt.Errorf("observer %q: %w", o.Name, err)
			}
			p.Metrics.Retries.WithLabelValues(o.Name).Add(float64(retries))
			d.Retries += retries
			// The actions that already succeeded are skipped this round.
			for i := range d.Actions {
				if d.Actions[i].Done {
					d.CacheHits++
					p.Metrics.CacheHits.WithLabelValues(o.Name).Inc()
				}
			}
		}
		if f := failureOf(o, d.Actions); f != nil {
			return nil, f
		}
		d.Outcome = OutcomeSucceeded
		return nil, nil
	}
}

// actions is the innermost handler: one round of the observer's actions
// that are neither done nor given up, each through the result cache and
// its endpoint's circuit breaker. It records each outcome in d.Actions
// and returns nil; the retry layer reads them.
func (p *Policy) actions(ms []actionMetrics) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		ctx, d := msg.Context(), DeliveryFrom(msg.Context())
		exec := func(actx context.Context, ev *event.Event, b *engine.Bound) error {
			st := &d.Actions[b.Index] // each action touches only its own state
			if st.Done || st.GaveUp {
				return nil
			}
			return p.execAction(actx, d, b, st, &ms[b.Index])
		}
		_ = d.Observer.Run(ctx, d.Event, exec)
		return nil, nil
	}
}

// actionMetrics are one action's metric children and breaker key,
// resolved when the stack is built: WithLabelValues hashes and checks
// its labels on every call, and the key is formatted.
type actionMetrics struct {
	breakerKey                     string
	limit                          *Limit // of the action's endpoint; nil when it names none
	succeeded, failed, breakerOpen prometheus.Counter
	duration                       prometheus.Observer
}

func (p *Policy) actionMetrics(o *engine.Observer) []actionMetrics {
	ms := make([]actionMetrics, len(o.Actions))
	for i, b := range o.Actions {
		id := fmt.Sprintf("%d:%s", b.Index, b.Spec.Type)
		ms[i] = actionMetrics{
			breakerKey:  breakerKey(b, b.ID(o.Name)),
			succeeded:   p.Metrics.Actions.WithLabelValues(o.Name, id, "succeeded"),
			failed:      p.Metrics.Actions.WithLabelValues(o.Name, id, "failed"),
			breakerOpen: p.Metrics.Actions.WithLabelValues(o.Name, id, "breaker_open"),
			duration:    p.Metrics.ActionDuration.WithLabelValues(o.Name, id),
		}
		if endpoint := endpointOf(b); endpoint != "" && p.Limits != nil {
			ms[i].limit = p.Limits.Get(endpoint)
		}
	}
	return ms
}

// execAction runs one action once, through its endpoint's circuit
// breaker, and records the outcome in st; a success goes to the result
// cache at once.
func (p *Policy) execAction(ctx context.Context, d *Delivery, b *engine.Bound, st *ActionState, m *actionMetrics) error {
	if p.Tracer != nil {
		return p.execActionTraced(ctx, d, b, st, m)
	}
	return p.execActionOnce(ctx, d, b, st, m)
}

func (p *Policy) execActionOnce(ctx context.Context, d *Delivery, b *engine.Bound, st *ActionState, m *actionMetrics) error {
	var ticket Ticket
	if m.limit != nil {
		t, err := m.limit.Acquire(ctx, d.Event.TenantID)
		if err != nil {
			return err // ctx ended; the retry layer sees it
		}
		ticket = t
	}
	start := time.Now()
	err := p.Breakers.Do(m.breakerKey, func() error { return handlers.Execute(ctx, b, d.Event) })
	if errors.Is(err, ErrBreakerOpen) {
		ticket.Cancel()
		st.Rejected, st.RetryIn = true, BreakerWait(err)
		m.breakerOpen.Inc()
		return err
	}
	ticket.Done(err)
	st.Rejected = false
	st.Attempts++
	now := time.Now()
	m.duration.Observe(now.Sub(start).Seconds())
	if err == nil {
		st.Done, st.LastErr = true, nil
		m.succeeded.Inc()
		if d.Claim != nil {
			d.Claim.Succeeded(ctx, b.Index)
		}
		return nil
	}
	m.failed.Inc()
	st.LastErr, st.Permanent, st.Last = err, handlers.IsPermanent(err), now
	if st.First.IsZero() {
		st.First = now
	}
	return err
}

// ConfigureBreakers gives the endpoint of each action with a "breaker"
// table of its own the settings it asks for ([breaker] with the table on
// top). Run it once the observers are compiled, before any event.
func (p *Policy) ConfigureBreakers(obs []*engine.Observer) error {
	var errs []error
	for _, o := range obs {
		for _, b := range o.Actions {
			raw := o.Config.Actions[b.Index]
			if _, ok := raw[config.ActionBreakerKey]; !ok {
				continue
			}
			bc, err := p.Config.BreakerFor(raw, b.Spec.Path)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			errs = append(errs, p.Breakers.Configure(breakerKey(b, b.ID(o.Name)), BreakerConfigOf(bc),
				config.Join(b.Spec.Path, config.ActionBreakerKey)))
		}
	}
	return errors.Join(errs...)
}

// breakerKey names an action's endpoint, which its circuit breaker is
// keyed by: the action's BreakerKey when it has one, else own (its
// Bound.ID), a breaker of its own.
func breakerKey(b *engine.Bound, own string) string {
	if endpoint := endpointOf(b); endpoint != "" {
		return endpoint
	}
	return own
}

// endpointOf is the endpoint an action names with BreakerKey, or "".
func endpointOf(b *engine.Bound) string {
	if k, ok := b.Action.(BreakerKeyer); ok {
		return k.BreakerKey()
	}
	return ""
}

// BreakerFailure tells which errors count against an action's endpoint:
// a permanent error (a 4xx, a bad payload) shows that it is up, and so
// does a 429 (handlers.ErrThrottled), which the delivery limit answers
// by sending less.
func BreakerFailure(err error) bool {
	return err != nil && !handlers.IsPermanent(err) && !errors.Is(err, handlers.ErrThrottled)
}
