package middleware

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/engine"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/stores"
)

// Outcomes of one observer on one event, as counted in
// millrace_observer_runs_total{result}.
const (
	OutcomeSucceeded    = "succeeded"
	OutcomeSkipped      = "skipped_condition"
	OutcomeDuplicate    = "duplicate_skipped"
	OutcomeDeadLettered = "dead_lettered"
	OutcomeLogged       = "logged"
	OutcomeDropped      = "dropped"
	// OutcomeRedeliver: the message goes back to the bus.
	OutcomeRedeliver = "failed"
)

// Delivery is one observer's run on one event as the delivery
// middleware see it: what it runs on, set by the caller, and what
// happened, set by the middleware. Each layer of a Stack finds it in the
// message's context (DeliveryFrom).
type Delivery struct {
	Event    *event.Event
	Observer *engine.Observer
	// Payload is the message as it was on the bus, for a dead letter;
	// Topic the topic it came from.
	Payload []byte
	Topic   string

	// Claim is the ledger's claim on (event, observer); nil when dedup
	// and the result cache are both off.
	Claim *Claim
	// ParkReplay is set when the event is an entry of a parked group run
	// by `millrace dlq replay --entity`: it is not parked again, and a
	// final failure is returned (a *Failure) for the group to stay as it
	// is instead of being written to the store once more.
	ParkReplay bool
	// RunAll is set on a replay asked to run every action again: the
	// result cache's hits are ignored.
	RunAll bool
	// Actions is the progress of each of the observer's actions.
	Actions []ActionState
	// Outcome is one of the Outcome constants once the stack returned.
	Outcome string
	// Retries counts action executions after a transient failure;
	// CacheHits actions skipped because they already succeeded (stored,
	// or earlier in this delivery); CacheMisses actions looked up and
	// not found.
	Retries, CacheHits, CacheMisses int
	// RetryDelay is how long the bus should wait before it redelivers,
	// when the stack returned an error.
	RetryDelay time.Duration
}

// MarkSucceeded marks done the actions of d's observer whose keys
// (stores.ActionKeys) keys names: a replayed dead letter's record of the
// actions that had succeeded. They count as cache hits. Call it before
// the stack runs.
func (d *Delivery) MarkSucceeded(keys []string) {
	want := make(map[string]bool, len(keys))
	for _, k := range keys {
		want[k] = true
	}
	for i, k := range stores.ActionKeys(actionHashes(d.Observer)) {
		if want[k] && !d.Actions[i].Done {
			d.Actions[i].Done = true
			d.CacheHits++
		}
	}
}

// succeeded lists the actions of d that are done, for a dead letter.
func (d *Delivery) succeeded() []stores.SucceededAction {
	var out []stores.SucceededAction
	for i, k := range stores.ActionKeys(actionHashes(d.Observer)) {
		if d.Actions[i].Done {
			out = append(out, stores.SucceededAction{Index: d.Observer.Actions[i].Index, Key: k})
		}
	}
	return out
}

func actionHashes(o *engine.Observer) []string {
	hashes := make([]string, len(o.Actions))
	for i, b := range o.Actions {
		hashes[i] = b.Spec.Hash
	}
	return hashes
}

// ActionsRun counts the action executions of the delivery, retries
// included.
func (d *Delivery) ActionsRun() int {
	n := 0
	for _, st := range d.Actions {
		n += st.Attempts
	}
	return n
}

// ActionState is one action's progress through one delivery.
type ActionState struct {
	Done     bool // succeeded now or before (result cache)
	GaveUp   bool // failed permanently or used its attempts
	Rejected bool // its circuit breaker refused the last try
	// RetryIn is how long until the breaker that refused the last try
	// lets a trial through.
	RetryIn     time.Duration
	Attempts    int // executions, breaker refusals not included
	LastErr     error
	Permanent   bool
	First, Last time.Time // first and last failure
}

type deliveryKey struct{}

// WithDelivery returns ctx carrying d.
func WithDelivery(ctx context.Context, d *Delivery) context.Context {
	return context.WithValue(ctx, deliveryKey{}, d)
}

// DeliveryFrom returns the delivery a Stack runs, or nil.
func DeliveryFrom(ctx context.Context) *Delivery {
	d, _ := ctx.Value(deliveryKey{}).(*Delivery)
	return d
}

// Run runs handler, a Stack's handler, on d: the message it sees shares
// msg's UUID, metadata and payload and carries d in its context. It
// returns nil when the message may be acked as far as this observer is
// concerned, and an error (with d.RetryDelay) when it must be
// redelivered.
func Run(msg *message.Message, d *Delivery, handler message.HandlerFunc) error {
	// A message of its own per observer, since observers of one event run
	// concurrently and each needs its own context. It is never acked:
	// the bus message is.
	m := &message.Message{UUID: msg.UUID, Metadata: msg.Metadata, Payload: msg.Payload}
	m.SetContext(WithDelivery(msg.Context(), d))
	_, err := handler(m)
	if err != nil && d.Outcome == "" {
		d.Outcome = OutcomeRedeliver
	}
	return err
}

// Failure is a final failure of an observer on an event: the failure
// policy (dead letter, log or drop) takes it from there, and the message
// is acked unless the policy itself failed.
type Failure struct {
	Reason, Action string
	Err            error
	Attempts       int
	First, Last    time.Time
}

func (f *Failure) Error() string { return fmt.Sprintf("%s: %v", f.Reason, f.Err) }
func (f *Failure) Unwrap() error { return f.Err }

// failureOf sums up the actions that gave up, if any: the first one
// names the entry, every error is kept.
func failureOf(o *engine.Observer, states []ActionState) *Failure {
	var f Failure
	var errs []error
	for i, st := range states {
		if st.Done {
			continue
		}
		b := o.Actions[i]
		if f.Action == "" {
			f.Action = b.ID(o.Name)
		}
		if st.Permanent {
			f.Reason = stores.ReasonPermanent
		}
		errs = append(errs, fmt.Errorf("action %s: %w", b.ID(o.Name), st.LastErr))
		f.Attempts = max(f.Attempts, st.Attempts)
		if f.First.IsZero() || st.First.Before(f.First) {
			f.First = st.First
		}
		if st.Last.After(f.Last) {
			f.Last = st.Last
		}
	}
	if len(errs) == 0 {
		return nil
	}
	if f.Reason == "" {
		f.Reason = stores.ReasonExhausted
	}
	f.Err = errors.Join(errs...)
	return &f
}
