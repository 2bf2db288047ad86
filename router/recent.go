package router

import (
	"sync"
	"time"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/middleware"
	"github.com/millrace/millrace/router/console"
)

// recentPerObserver is how many deliveries the console keeps per
// observer: enough to see a pattern, small enough that the ring costs a
// few kilobytes per observer.
const recentPerObserver = 50

// recentDeliveries keeps the last recentPerObserver deliveries of each
// observer in a ring. It exists only when the console is on, so that a
// process without it pays nothing per event.
type recentDeliveries struct {
	mu    sync.Mutex
	rings map[string]*ring
}

type ring struct {
	buf  [recentPerObserver]console.Delivery
	next int
	full bool
}

func newRecentDeliveries() *recentDeliveries {
	return &recentDeliveries{rings: map[string]*ring{}}
}

// record adds d's outcome; start is when its stack began.
func (rd *recentDeliveries) record(ev *event.Event, d *middleware.Delivery, start time.Time) {
	now := time.Now()
	rec := console.Delivery{At: now, Observer: d.Observer.Name, EventID: ev.ID, EventType: string(ev.Type),
		Entity: ev.Entity, EntityID: ev.EntityID, Outcome: d.Outcome, Latency: now.Sub(start)}
	for _, a := range d.Actions {
		rec.Attempts += a.Attempts
		if a.LastErr != nil {
			rec.Error = a.LastErr.Error()
		}
	}
	rd.add(rec)
}

func (rd *recentDeliveries) add(rec console.Delivery) {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	r, ok := rd.rings[rec.Observer]
	if !ok {
		r = &ring{}
		rd.rings[rec.Observer] = r
	}
	r.buf[r.next] = rec
	r.next = (r.next + 1) % len(r.buf)
	r.full = r.full || r.next == 0
}

// snapshot returns each observer's deliveries, newest first, observers
// sorted by name.
func (rd *recentDeliveries) snapshot() map[string][]console.Delivery {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	out := make(map[string][]console.Delivery, len(rd.rings))
	for name, r := range rd.rings {
		n := r.next
		if r.full {
			n = len(r.buf)
		}
		list := make([]console.Delivery, 0, n)
		for i := 1; i <= n; i++ {
			list = append(list, r.buf[(r.next-i+len(r.buf))%len(r.buf)])
		}
		out[name] = list
	}
	return out
}
