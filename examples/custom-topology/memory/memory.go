package memory

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/millrace/millrace/stores"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
)

// Name is the value of the topology key that picks this topology.
const Name = "memory"

// Topology returns the registry entry: a custom binary registers it with
// opts.Topologies.MustRegister(memory.Topology()).
func Topology() topologies.Topology {
	return topologies.Topology{
		Name:     Name,
		Build:    Build,
		Validate: Validate,
		// GoChannel keeps topics apart, so the publish action may use
		// them; its subscribers on other topics are in the process.
		// Nothing is durable (millrace dlq list says so) and there are
		// no partitions (nats.partitions and redis.partitions are refused).
		Features: config.Features{Topics: true},
	}
}

// Validate checks what the topology cannot do: share a bus between
// processes, capture changes from PostgreSQL, or let an action publish
// onto router.topic (see the package doc). Each problem names its key.
func Validate(cfg *config.Config) error {
	var errs []error
	if cfg.Role != "all" {
		errs = append(errs, config.Errorf("role", "the %s topology runs in one process: role must be all, got %q", Name, cfg.Role))
	}
	if len(cfg.Sources) > 0 {
		errs = append(errs, config.Errorf("sources", "the %s topology does not capture: events come from HTTP ingest", Name))
	}
	for _, name := range cfg.ObserverNames() {
		for i, a := range cfg.Observers[name].Actions {
			if a.Type() == "publish" && a["topic"] == cfg.Router.Topic {
				errs = append(errs, config.Errorf(config.Index("observers."+name+".actions", i)+".topic",
					"the %s topology hands an event to the observers before the publish returns: an action cannot publish onto router.topic (%q)",
					Name, cfg.Router.Topic))
			}
		}
	}
	return errors.Join(errs...)
}

// Build returns the backend: one GoChannel as publisher and subscriber,
// the dead letters in memory; the dedup ledger and the result cache are
// left to the router's in-memory defaults.
func Build(_ context.Context, cfg *config.Config, logger *slog.Logger) (*topologies.Backend, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	bus := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true},
		watermill.NewSlogLogger(logger.With("component", "bus")))
	logger.Info("memory topology: GoChannel bus, dead letters in memory; nothing outlives the process")
	return &topologies.Backend{
		Publisher:   bus,
		Subscriber:  bus,
		DeadLetters: NewDeadLetters(cfg.DLQ.MaxEntries),
		Ready:       func(context.Context) error { return nil },
		Closers:     []func() error{bus.Close},
	}, nil
}

// DeadLetters is a dead-letter store in memory, oldest entry first. It
// is safe for concurrent use; an entry lasts as long as the process.
type DeadLetters struct {
	mu      sync.Mutex
	max     int
	next    int
	entries []stores.DeadLetter
}

var _ stores.DeadLetters = (*DeadLetters)(nil)

// NewDeadLetters returns an empty store that keeps the newest max
// entries (every entry when max is 0).
func NewDeadLetters(maxEntries int) *DeadLetters { return &DeadLetters{max: maxEntries} }

// Put stores dl under a new id.
func (s *DeadLetters) Put(_ context.Context, dl stores.DeadLetter) (string, error) {
	if dl.LastFailure.IsZero() {
		dl.LastFailure = time.Now().UTC()
	}
	if dl.FirstFailure.IsZero() {
		dl.FirstFailure = dl.LastFailure
	}
	dl.Payload = slices.Clone(dl.Payload)
	dl.Succeeded = slices.Clone(dl.Succeeded)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	dl.ID = strconv.Itoa(s.next)
	s.entries = append(s.entries, dl)
	if s.max > 0 && len(s.entries) > s.max {
		s.entries = slices.Delete(s.entries, 0, len(s.entries)-s.max)
	}
	return dl.ID, nil
}

// List returns the entries that f selects, oldest first.
func (s *DeadLetters) List(_ context.Context, f stores.DeadLetterFilter) ([]stores.DeadLetter, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []stores.DeadLetter{}
	for _, dl := range s.entries {
		if len(out) == limit {
			break
		}
		if (f.Observer == "" || dl.Observer == f.Observer) && (f.Since.IsZero() || !dl.LastFailure.Before(f.Since)) {
			out = append(out, dl)
		}
	}
	return out, nil
}

// Get returns the entry with id, or an error wrapping
// stores.ErrNotFound.
func (s *DeadLetters) Get(_ context.Context, id string) (stores.DeadLetter, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, dl := range s.entries {
		if dl.ID == id {
			return dl, nil
		}
	}
	return stores.DeadLetter{}, fmt.Errorf("memory dead letters: %q: %w", id, stores.ErrNotFound)
}

// Delete removes the entries with ids; unknown ids are ignored.
func (s *DeadLetters) Delete(_ context.Context, ids ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries = slices.DeleteFunc(s.entries, func(dl stores.DeadLetter) bool { return slices.Contains(ids, dl.ID) })
	return nil
}

// Purge removes every entry and returns how many there were.
func (s *DeadLetters) Purge(context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.entries)
	s.entries = nil
	return n, nil
}

// Count returns the number of entries.
func (s *DeadLetters) Count(context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries), nil
}
