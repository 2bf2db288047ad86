package middleware

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/stores"
)

// OutcomeParked: the event did not run, because its entity is parked
// for the observer; it joined the parked group (on_failure = "park").
const OutcomeParked = "parked"

// loadLimit bounds the entries Parks.Load reads: a store holding more
// parked entries than this has a problem no restart fixes.
const loadLimit = 1 << 24

// Parks is the set of parked (observer, entity key) groups this process
// knows, with their sizes for the metrics. The delivery stack asks it
// for every event of an observer whose on_failure is "park", so it
// answers from memory: the store holds the groups (entries with
// DeadLetter.Parked), and Parks is loaded from it at start and kept up
// to date by the park and release of this process. The process that
// parks an entity is the one that runs its events (the owner of its
// partition), which is why a set of its own is enough
// (docs/adr/0014-park-the-key.md says what holds across a rebalance).
// It is safe for concurrent use.
type Parks struct {
	// n counts the groups: while it is 0, the check costs one atomic
	// load and builds no key.
	n      atomic.Int64
	mu     sync.RWMutex
	groups map[parkID]*parkGroup

	entities, events, oldest *prometheus.Desc
}

var _ prometheus.Collector = (*Parks)(nil)

type parkID struct{ observer, key string }

type parkGroup struct {
	order  string // the entity's ordering key
	events int
	since  time.Time // the head's first failure
}

// NewParks returns an empty set.
func NewParks() *Parks {
	return &Parks{
		groups: map[parkID]*parkGroup{},
		entities: prometheus.NewDesc("millrace_parked_entities",
			"Parked (observer, entity) groups: entities whose events wait for `millrace dlq replay --entity`.", nil, nil),
		events: prometheus.NewDesc("millrace_parked_events",
			"Events in parked groups, their failed heads included.", nil, nil),
		oldest: prometheus.NewDesc("millrace_parked_oldest_age_seconds",
			"Age of the oldest parked group, from its head's first failure (0 when none).", nil, nil),
	}
}

// Load reads the parked groups of store, for the processes that start
// while entities are parked.
func (p *Parks) Load(ctx context.Context, store stores.DeadLetters) error {
	return p.Reload(ctx, store, nil)
}

// Reload replaces the groups of the entities whose ordering key (event
// Key) in accepts with those store holds; nil accepts every entity. A
// worker calls it for a partition it has just taken and not consumed
// yet: the previous owner may have parked or released its entities.
func (p *Parks) Reload(ctx context.Context, store stores.DeadLetters, in func(order string) bool) error {
	dls, err := store.List(ctx, stores.DeadLetterFilter{Parked: true, Limit: loadLimit})
	if err != nil {
		return fmt.Errorf("parks: load: %w", err)
	}
	type entry struct {
		observer, key, order string
		since                time.Time
	}
	fresh := make([]entry, 0, len(dls))
	for _, dl := range dls {
		ev, err := event.Decode(dl.Payload)
		if err != nil {
			continue // only events are parked
		}
		order := ev.Key()
		if in == nil || in(order) {
			fresh = append(fresh, entry{dl.Observer, dl.Key, order, dl.FirstFailure})
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, g := range p.groups {
		if in == nil || in(g.order) {
			delete(p.groups, id)
			p.n.Add(-1)
		}
	}
	for _, e := range fresh {
		p.parkLocked(e.observer, e.key, e.order, e.since)
	}
	return nil
}

// Parked tells whether observer's events of ev's entity wait in a
// group. The key is built only when some group exists.
func (p *Parks) Parked(observer string, ev *event.Event) bool {
	if p == nil || p.n.Load() == 0 {
		return false
	}
	key := stores.ParkKey(ev.Source, ev.Entity, ev.EntityID)
	p.mu.RLock()
	_, ok := p.groups[parkID{observer, key}]
	p.mu.RUnlock()
	return ok
}

// Park adds one event to the group of (observer, key), creating it with
// since as its age when it is new; order is the entity's ordering key
// (event Key), which places it in a partition.
func (p *Parks) Park(observer, key, order string, since time.Time) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.parkLocked(observer, key, order, since)
}

func (p *Parks) parkLocked(observer, key, order string, since time.Time) {
	id := parkID{observer, key}
	g, ok := p.groups[id]
	if !ok {
		g = &parkGroup{order: order, since: since}
		p.groups[id] = g
		p.n.Add(1)
	}
	g.events++
	if since.Before(g.since) {
		g.since = since
	}
}

// Unpark counts n events of the group as gone (replayed, or skipped
// out of it); the group stays until Release.
func (p *Parks) Unpark(observer, key string, n int) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if g, ok := p.groups[parkID{observer, key}]; ok {
		g.events = max(g.events-n, 0)
	}
}

// Release ends the group: the entity's events run again.
func (p *Parks) Release(observer, key string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	id := parkID{observer, key}
	if _, ok := p.groups[id]; ok {
		delete(p.groups, id)
		p.n.Add(-1)
	}
}

// Describe implements prometheus.Collector.
func (p *Parks) Describe(ch chan<- *prometheus.Desc) {
	ch <- p.entities
	ch <- p.events
	ch <- p.oldest
}

// Collect implements prometheus.Collector.
func (p *Parks) Collect(ch chan<- prometheus.Metric) {
	p.mu.RLock()
	entities, events := len(p.groups), 0
	var oldest time.Time
	for _, g := range p.groups {
		events += g.events
		if oldest.IsZero() || g.since.Before(oldest) {
			oldest = g.since
		}
	}
	p.mu.RUnlock()
	age := 0.0
	if !oldest.IsZero() {
		age = time.Since(oldest).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(p.entities, prometheus.GaugeValue, float64(entities))
	ch <- prometheus.MustNewConstMetric(p.events, prometheus.GaugeValue, float64(events))
	ch <- prometheus.MustNewConstMetric(p.oldest, prometheus.GaugeValue, age)
}
