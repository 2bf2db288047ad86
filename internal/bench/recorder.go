package bench

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/millrace/millrace/event"
)

// recorder collects what one run delivered: which of its n events
// arrived, when, and how long after their timestamp. It is safe for
// concurrent use; each index is recorded once, later copies count as
// duplicates.
type recorder struct {
	n     int
	start atomic.Int64 // unix ns of the first send
	last  atomic.Int64 // unix ns of the latest delivery
	// gap is the longest time between two consecutive deliveries, in
	// ns: a stalled consumer shows here, not in the throughput.
	gap  atomic.Int64
	seen []atomic.Bool
	lat  []atomic.Int64 // ns from the event's timestamp to its delivery
	done atomic.Int64
	dups atomic.Int64
	bad  atomic.Int64 // deliveries that named no event of the run
	all  chan struct{}
}

func newRecorder(n int) *recorder {
	return &recorder{n: n, seen: make([]atomic.Bool, n), lat: make([]atomic.Int64, n), all: make(chan struct{})}
}

// started notes the time of the first send.
func (r *recorder) started(t time.Time) { r.start.CompareAndSwap(0, t.UnixNano()) }

// mark records the delivery of event i, stamped ts at its source.
func (r *recorder) mark(i int64, ts time.Time) {
	if i < 0 || i >= int64(r.n) {
		r.bad.Add(1)
		return
	}
	if r.seen[i].Swap(true) {
		r.dups.Add(1)
		return
	}
	now := time.Now().UnixNano()
	r.lat[i].Store(now - ts.UnixNano())
	for {
		l := r.last.Load()
		if now <= l {
			break
		}
		if r.last.CompareAndSwap(l, now) {
			if l != 0 {
				r.widenGap(now - l)
			}
			break
		}
	}
	if r.done.Add(1) == int64(r.n) {
		close(r.all)
	}
}

func (r *recorder) widenGap(d int64) {
	for {
		g := r.gap.Load()
		if d <= g || r.gap.CompareAndSwap(g, d) {
			return
		}
	}
}

// markEvent records an event delivered to an action: its index is
// data.n, its source time the event's timestamp.
func (r *recorder) markEvent(ev *event.Event) {
	i, ok := index(ev.Data["n"])
	if !ok {
		r.bad.Add(1)
		return
	}
	r.mark(i, ev.Timestamp)
}

// index reads data.n whatever number type the decoder gave it.
func index(v any) (int64, bool) {
	switch x := v.(type) {
	case int64:
		return x, true
	case int:
		return int64(x), true
	case float64:
		return int64(x), x == math.Trunc(x)
	case json.Number:
		i, err := x.Int64()
		return i, err == nil
	case string:
		i, err := strconv.ParseInt(x, 10, 64)
		return i, err == nil
	}
	return 0, false
}

// Latency is a latency distribution in milliseconds.
type Latency struct {
	P50 float64 `json:"p50_ms"`
	P95 float64 `json:"p95_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// latency returns the distribution of the recorded deliveries.
func (r *recorder) latency() Latency {
	v := make([]int64, 0, r.done.Load())
	for i := range r.seen {
		if r.seen[i].Load() {
			v = append(v, r.lat[i].Load())
		}
	}
	if len(v) == 0 {
		return Latency{}
	}
	slices.Sort(v)
	q := func(p float64) float64 {
		k := int(math.Ceil(p*float64(len(v)))) - 1 // nearest rank
		return ms(v[min(max(k, 0), len(v)-1)])
	}
	return Latency{P50: q(0.50), P95: q(0.95), P99: q(0.99), Max: ms(v[len(v)-1])}
}

// elapsed is the time from the first send to the last delivery.
func (r *recorder) elapsed() time.Duration {
	s, l := r.start.Load(), r.last.Load()
	if s == 0 || l <= s {
		return 0
	}
	return time.Duration(l - s)
}

func ms(ns int64) float64 { return round3(float64(ns) / 1e6) }

// round3 keeps three decimals, enough for milliseconds and ratios.
func round3(f float64) float64 { return math.Round(f*1000) / 1000 }
