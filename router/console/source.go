package console

import (
	"context"
	"time"

	"github.com/millrace/millrace/stores"
)

// Source is what the console shows and acts on; the router implements
// it. The interface lives here, with its one consumer, so that the
// console does not import the router.
type Source interface {
	// Topology is the config's topology.
	Topology() string
	// ObserverNames are the configured observers, sorted.
	ObserverNames() []string
	// Observers are the observers' counters since the process started.
	Observers() []Observer
	// Breakers are the circuit breakers used so far, one per endpoint.
	Breakers() []Breaker
	// DeadLetters returns the dead-letter store, or why there is none
	// (still starting, or the topology keeps none).
	DeadLetters() (stores.DeadLetters, error)
	// DeadLettersVolatile reports whether the store lives in the
	// process, and its entries vanish when it stops.
	DeadLettersVolatile() bool
	// Replay publishes the entries again, as POST /v1/dlq/replay does,
	// and returns those replayed and, by id, why others were not.
	Replay(ctx context.Context, ids []string) (replayed []string, failed map[string]string, err error)
	// Recent returns the last deliveries of each observer, newest first.
	Recent() map[string][]Delivery
	// ConfigTOML is the effective config with secrets masked.
	ConfigTOML() ([]byte, error)
	// Bus reports the bus's health.
	Bus(ctx context.Context) BusHealth
}

// Observer is one observer's counters.
type Observer struct {
	Name string
	// Matched counts events that matched the observer; the others
	// split it by outcome.
	Matched, Succeeded, SkippedCondition, Duplicate, DeadLettered, Logged, Dropped, Redelivered uint64
	Actions                                                                                     []Action
}

// Ran counts the events whose actions ran (not skipped by the
// condition or as duplicates).
func (o Observer) Ran() uint64 { return o.Matched - o.SkippedCondition - o.Duplicate }

// Failed counts the events the observer failed on.
func (o Observer) Failed() uint64 { return o.DeadLettered + o.Logged + o.Dropped + o.Redelivered }

// Action is one action of an observer.
type Action struct {
	Name string
	// Runs and Failures count executions by result.
	Runs, Failures, BreakerOpen uint64
	// P99 is estimated from the duration histogram's buckets, as
	// Prometheus's histogram_quantile does; 0 with no execution yet.
	P99 time.Duration
}

// Breaker is one endpoint's circuit breaker.
type Breaker struct {
	Endpoint string
	// State is "closed", "half-open" or "open".
	State string
}

// Delivery is one observer's handling of one event.
type Delivery struct {
	At        time.Time
	Observer  string
	EventID   string
	EventType string
	Entity    string
	EntityID  string
	// Outcome is succeeded, skipped_condition, duplicate_skipped,
	// dead_lettered, logged, dropped or failed (left for a redelivery).
	Outcome string
	// Latency is how long the observer took for the event, its retries
	// included.
	Latency time.Duration
	// Attempts counts action executions; Error is the last action error.
	Attempts int
	Error    string
}

// BusHealth is what the process knows of its bus.
type BusHealth struct {
	Topology string
	// Ready is nil when the services the process needs answer.
	Ready error
	// Lags are the bus consumers' distances from the head; LagError
	// says why they could not be read.
	Lags     []Lag
	LagError string
	// Metrics are the bus's and the capture's own series.
	Metrics []Metric
	// Unavailable says, per topology, what the process cannot show.
	Unavailable []string
}

// Metric is one series of a metric family.
type Metric struct {
	Name   string
	Labels string
	Value  float64
	Help   string
}

// Lag is one bus consumer's distance from the head of the bus.
type Lag struct {
	Consumer string
	// Pending counts messages not delivered yet (-1: unknown);
	// AckPending those delivered and not acked.
	Pending, AckPending int64
	// Position and Head: the last position delivered and the bus's last.
	Position, Head string
}
