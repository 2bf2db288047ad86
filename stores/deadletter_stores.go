package stores

import (
	"context"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// What the dead-letter stores share.

// sinceSlack widens a List's time filter when a store seeks by the time
// an entry was stored, which the server's clock gives, while LastFailure
// comes from the writer's clock: they may differ a little. Entries inside
// the margin are then filtered exactly on LastFailure.
const sinceSlack = 5 * time.Minute

// maxErrorLen bounds the stored error text: an entry must stay within the
// message size limits of every store, whatever an action returned.
const maxErrorLen = 4096

// normalizeEntry fills the failure times and bounds the error text, the
// same way in every store.
func normalizeEntry(dl DeadLetter) DeadLetter {
	if dl.LastFailure.IsZero() {
		dl.LastFailure = time.Now()
	}
	if dl.FirstFailure.IsZero() {
		dl.FirstFailure = dl.LastFailure
	}
	// Microseconds: the precision of PostgreSQL, so that every store
	// gives back the times it was given.
	dl.FirstFailure = dl.FirstFailure.UTC().Truncate(time.Microsecond)
	dl.LastFailure = dl.LastFailure.UTC().Truncate(time.Microsecond)
	if len(dl.Error) > maxErrorLen {
		n := maxErrorLen
		for n > 0 && !utf8.RuneStart(dl.Error[n]) {
			n--
		}
		dl.Error = dl.Error[:n] + "…"
	}
	if dl.Payload == nil {
		dl.Payload = []byte{}
	}
	return dl
}

// matches applies a filter exactly, after a store's coarser selection.
func matches(dl DeadLetter, f DeadLetterFilter) bool {
	if f.Observer != "" && dl.Observer != f.Observer {
		return false
	}
	if (f.Key != "" && dl.Key != f.Key) || (f.Parked && !dl.Parked) {
		return false
	}
	return f.Since.IsZero() || !dl.LastFailure.Before(f.Since)
}

// CountingDeadLetters is a store that counts the entries written through
// it; everything else goes straight to the store it wraps.
type CountingDeadLetters struct {
	DeadLetters
	written prometheus.Counter
}

var _ DeadLetters = (*CountingDeadLetters)(nil)

// NewCountingDeadLetters wraps s so that each successful Put increments
// written (millrace_dlq_written_total).
func NewCountingDeadLetters(s DeadLetters, written prometheus.Counter) *CountingDeadLetters {
	return &CountingDeadLetters{DeadLetters: s, written: written}
}

// Put stores dl and counts it once it is durable.
func (c *CountingDeadLetters) Put(ctx context.Context, dl DeadLetter) (string, error) {
	id, err := c.DeadLetters.Put(ctx, dl)
	if err == nil {
		c.written.Inc()
	}
	return id, err
}
