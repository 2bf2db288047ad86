package e2e

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

// Recorder is an action for routers run in the test's process: each run
// takes Work, and it records how many times each event ran, the
// data.version of each entity's events in the order they ran, and how
// many ran at once.
type Recorder struct {
	work time.Duration

	mu          sync.Mutex
	runs        map[string]int
	versions    map[string][]int
	inFlight    int
	maxInFlight int
	n, want     int
	done        chan struct{}
}

// NewRecorder returns a Recorder whose runs take work.
func NewRecorder(work time.Duration) *Recorder {
	return &Recorder{work: work, runs: map[string]int{}, versions: map[string][]int{}, done: make(chan struct{})}
}

var _ handlers.Action = (*Recorder)(nil)

// Execute implements handlers.Action.
func (r *Recorder) Execute(_ context.Context, ev *event.Event) error {
	r.mu.Lock()
	r.inFlight++
	r.maxInFlight = max(r.maxInFlight, r.inFlight)
	r.mu.Unlock()
	time.Sleep(r.work)
	v, err := strconv.Atoi(fmt.Sprint(ev.Data["version"]))
	if err != nil {
		v = -1 // reported as out of order
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inFlight--
	r.runs[ev.ID]++
	r.versions[ev.EntityID] = append(r.versions[ev.EntityID], v)
	r.n++
	if r.n == r.want {
		close(r.done)
	}
	return nil
}

// Wait waits up to a minute until n runs were recorded.
func (r *Recorder) Wait(t testing.TB, n int) {
	t.Helper()
	r.mu.Lock()
	r.want = n
	if r.n >= n {
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	select {
	case <-r.done:
	case <-time.After(time.Minute):
		r.mu.Lock()
		defer r.mu.Unlock()
		t.Fatalf("%d of %d events ran within a minute", r.n, n)
	}
}

// Recorded is what a Recorder saw, as of Snapshot.
type Recorded struct {
	// Runs counts the runs; ByEvent, by event id.
	Runs    int
	ByEvent map[string]int
	// Versions are each entity's data.version values in run order (-1
	// for one that is not a number).
	Versions map[string][]int
	// MaxInFlight is the most runs at once.
	MaxInFlight int
}

// Snapshot copies what was recorded so far.
func (r *Recorder) Snapshot() Recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := Recorded{Runs: r.n, ByEvent: maps.Clone(r.runs), Versions: map[string][]int{}, MaxInFlight: r.maxInFlight}
	for k, v := range r.versions {
		out.Versions[k] = append([]int(nil), v...)
	}
	return out
}

// InOrder reports the entities whose versions did not run as 0, 1, 2…
func (s Recorded) InOrder() (bad []string) {
	for id, vs := range s.Versions {
		for i, v := range vs {
			if v != i {
				bad = append(bad, fmt.Sprintf("entity %s ran versions %v", id, vs))
				break
			}
		}
	}
	return bad
}
