package router

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/bus/partition"
	"github.com/millrace/millrace/engine"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/middleware"
	"github.com/millrace/millrace/stores"
)

// Parked entities (on_failure = "park"): the protocol is in
// docs/adr/0014-park-the-key.md.

// Operations of a release message (bus.ParkMetadata).
const (
	parkReplay = "replay"
	// parkSkip is followed by ":" and the id of the head it takes out,
	// so that a redelivered release does not take out the next one.
	parkSkip = "skip"
)

// parkGroupLimit bounds the entries of one group a release reads.
const parkGroupLimit = 1 << 20

// releaseRounds bounds how often a release reads its group again after
// replaying it, should entries written by an earlier owner of the
// entity's partition show up.
const releaseRounds = 3

// loadParks gives the policy its set of parked entities, loaded from the
// dead-letter store when an observer parks, before any event runs.
func (r *Router) loadParks(ctx context.Context) error {
	parks := middleware.NewParks()
	if err := r.metrics.Registry.Register(parks); err != nil {
		return fmt.Errorf("router: park metrics: %w", err)
	}
	r.policy.Parks = parks
	if r.policy.DeadLetters == nil || !r.parking() {
		return nil
	}
	if pw, ok := r.backend.Subscriber.(bus.PartitionWatcher); ok {
		// With partitions, an entity may have been parked or released by
		// the partition's previous owner since this process loaded.
		pw.OnAcquire(r.reloadParks)
	}
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := parks.Load(lctx, r.policy.DeadLetters); err != nil {
		r.metrics.Registry.Unregister(parks)
		return fmt.Errorf("router: %w", err)
	}
	return nil
}

// reloadParks reads afresh the parked groups of partition p of n, which
// this process has just taken and does not consume yet.
func (r *Router) reloadParks(ctx context.Context, p, n int) error {
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err := r.policy.Parks.Reload(lctx, r.policy.DeadLetters, func(order string) bool { return partition.Of(order, n) == p })
	if err != nil {
		return fmt.Errorf("router: partition %d: %w", p, err)
	}
	return nil
}

// parking tells whether some observer parks.
func (r *Router) parking() bool {
	for _, o := range r.cfg.Observers {
		if o.OnFailure == "park" {
			return true
		}
	}
	return false
}

// releasePark runs the parked group of (o, the entity of ev) in order,
// head first, deleting each entry once it succeeded, and releases the
// entity once the group is empty. A final failure stops it: the entry
// stays the head, the group stays parked, and the message is acked. An
// error that is no final failure (an open breaker, the store or the
// process going away) leaves the message for a redelivery, which goes
// on where this one stopped.
//
// It runs as the handler of the release message, which carries the
// entity's ordering key: the entity's events behind it wait for it, so
// none overtakes the group, and the ones that find the entity still
// parked join the group at its end.
func (r *Router) releasePark(msg *message.Message, ev *event.Event, o *engine.Observer, op string) error {
	ctx := msg.Context()
	key := stores.ParkKey(ev.Source, ev.Entity, ev.EntityID)
	log := r.logger.With("observer", o.Name, "entity", key, "op", op)
	store := r.policy.DeadLetters
	if store == nil {
		log.ErrorContext(ctx, "park release dropped: the topology has no dead-letter store")
		return nil
	}
	skip, skipHead := strings.CutPrefix(op, parkSkip+":")
	if !skipHead && op != parkReplay {
		log.ErrorContext(ctx, "park release dropped: unknown operation")
		return nil
	}
	retry := func(err error) error {
		msg.Metadata.Set(bus.RetryDelayMetadata, middleware.DeadLetterRetryDelay.String())
		log.WarnContext(ctx, "park release interrupted; it will be redelivered", "err", err)
		return err
	}
	filter := stores.DeadLetterFilter{Observer: o.Name, Key: key, Parked: true, Limit: parkGroupLimit}
	replayed := 0
	for round := 0; round < releaseRounds; round++ {
		group, err := store.List(ctx, filter)
		if err != nil {
			return retry(fmt.Errorf("park release: %w", err))
		}
		if len(group) == 0 {
			r.policy.Parks.Release(o.Name, key)
			log.InfoContext(ctx, "parked group replayed in order; entity released", "events", replayed)
			return nil
		}
		if skipHead && round == 0 && group[0].ID == skip {
			if err := r.skipHead(ctx, store, group[0]); err != nil {
				return retry(err)
			}
			r.policy.Parks.Unpark(o.Name, key, 1)
			log.InfoContext(ctx, "head of a parked group skipped; kept as an ordinary dead letter", "event_id", group[0].EventID)
			group = group[1:]
		}
		for _, dl := range group {
			done, err := r.runParked(msg, o, dl)
			if err != nil {
				return retry(err)
			}
			if !done {
				log.WarnContext(ctx, "parked event failed again; the entity stays parked", "event_id", dl.EventID,
					"dead_letter", dl.ID, "replayed", replayed)
				return nil
			}
			if err := store.Delete(ctx, dl.ID); err != nil {
				// Redelivered, the release runs the entry again: the dedup
				// ledger skips its effects.
				return retry(fmt.Errorf("park release: replayed, but not deleted: %w", err))
			}
			r.policy.Parks.Unpark(o.Name, key, 1)
			replayed++
		}
	}
	return retry(errors.New("park release: the group kept growing"))
}

// skipHead turns the head of a group into an ordinary dead letter (a
// new entry, at the end of the store) so that `millrace dlq` still
// shows it, and takes it out of the group.
func (r *Router) skipHead(ctx context.Context, store stores.DeadLetters, head stores.DeadLetter) error {
	kept := head
	kept.ID, kept.Parked = "", false
	if _, err := r.policy.PutDeadLetter(ctx, kept); err != nil {
		return fmt.Errorf("park skip: keep the head: %w", err)
	}
	if err := store.Delete(ctx, head.ID); err != nil {
		return fmt.Errorf("park skip: kept the head, but did not delete it from the group: %w", err)
	}
	return nil
}

// runParked runs one entry of a group through o's stack: done is true
// when it needs no more runs (succeeded, skipped by the condition or by
// dedup), false after a final failure; err is set when the entry must
// be tried again later.
func (r *Router) runParked(msg *message.Message, o *engine.Observer, dl stores.DeadLetter) (done bool, err error) {
	ev, err := event.Decode(dl.Payload)
	if err != nil {
		// Only events are parked; an entry that does not decode stays
		// the head for someone to look at (and skip).
		r.logger.ErrorContext(msg.Context(), "parked entry is not an event", "dead_letter", dl.ID, "err", err)
		return false, nil
	}
	d := &middleware.Delivery{Event: ev, Observer: o, Payload: dl.Payload, Topic: dl.Topic,
		Actions: make([]middleware.ActionState, len(o.Actions)), ParkReplay: true}
	if len(dl.Succeeded) > 0 {
		keys := make([]string, len(dl.Succeeded))
		for i, a := range dl.Succeeded {
			keys[i] = a.Key
		}
		d.MarkSucceeded(keys)
	}
	m := message.NewMessage(watermill.NewUUID(), dl.Payload)
	m.SetContext(msg.Context())
	err = middleware.Run(m, d, r.stacks[o.Name])
	if c, ok := r.runs[o.Name][d.Outcome]; ok {
		c.Inc()
	}
	switch d.Outcome {
	case middleware.OutcomeSucceeded, middleware.OutcomeSkipped, middleware.OutcomeDuplicate:
		return true, nil
	case middleware.OutcomeParked:
		return false, nil
	}
	if err == nil {
		err = fmt.Errorf("observer %q: parked event %s: outcome %q", o.Name, ev.ID, d.Outcome)
	}
	return false, err
}

// requestRelease publishes one release message per parked group of the
// entity key (of observer, or of every observer): the worker that runs
// the entity replays the group when the message reaches it. With skip,
// the message names the group's head, which it takes out first. It
// returns the groups' entries.
func (r *Router) requestRelease(ctx context.Context, store stores.DeadLetters, key, observer string, skip, dryRun bool) (ReplayResponse, error) {
	res := ReplayResponse{DryRun: dryRun, IDs: []string{}}
	dls, err := store.List(ctx, stores.DeadLetterFilter{Observer: observer, Key: key, Parked: true, Limit: parkGroupLimit})
	if err != nil {
		return res, err
	}
	heads := map[string]bool{}
	for _, dl := range dls {
		res.IDs = append(res.IDs, dl.ID)
		res.Replayed++
		if heads[dl.Observer] {
			continue
		}
		heads[dl.Observer] = true
		res.Groups++
		if dryRun {
			continue
		}
		if err := r.publishRelease(dl, skip); err != nil {
			res.Failed = append(res.Failed, ReplayFailure{ID: dl.ID, Error: err.Error()})
		}
	}
	return res, nil
}

// publishRelease puts the release message of head's group on the bus:
// head's event (for its ordering key and subject) under a new UUID,
// restricted to head's observer.
func (r *Router) publishRelease(head stores.DeadLetter, skip bool) error {
	ev, err := event.Decode(head.Payload)
	if err != nil {
		return fmt.Errorf("head %s is not an event: %w", head.ID, err)
	}
	m := message.NewMessage(watermill.NewUUID(), head.Payload)
	bus.SetRouting(m, ev)
	m.Metadata.Set(bus.ObserverMetadata, head.Observer)
	op := parkReplay
	if skip {
		op = parkSkip + ":" + head.ID
	}
	m.Metadata.Set(bus.ParkMetadata, op)
	topic := head.Topic
	if topic == "" {
		topic = r.cfg.Router.Topic
	}
	if err := r.backend.Publisher.Publish(topic, m); err != nil {
		return fmt.Errorf("publish release: %w", err)
	}
	return nil
}
