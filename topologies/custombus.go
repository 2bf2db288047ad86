package topologies

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/config"
)

// BusFunc builds a bus for WithBus: any Watermill Publisher and
// Subscriber pair, and the functions that close what it opened (run in
// reverse order after the router stopped). On error it closes what it
// opened itself.
//
// The router asks of the subscriber what docs/drivers.md lists: it must
// redeliver what the router nacks, and the order per entity is the
// subscriber's (one message at a time keeps it). It reads
// bus.KeyMetadata, bus.TenantMetadata and bus.ObserverMetadata from the
// messages, so the bus must carry metadata.
type BusFunc func(ctx context.Context, cfg *config.Config, logger *slog.Logger) (message.Publisher, message.Subscriber, []func() error, error)

// WithBus returns a topology named name that is base with its bus
// replaced by the pair bus builds: base builds the rest (dedup ledger,
// result cache, dead letters, change-log captures, which publish onto
// the new bus, and Ready), bus the Publisher and Subscriber the router
// uses. Its features are base's without partitions, which base's bus
// had and the new one has not; its checks are base's, and the
// registry's refusal of bus.driver = "watermill". A custom binary
// registers it like any topology (examples/custom-bus).
func WithBus(name string, base Topology, bus BusFunc) Topology {
	features := base.Features
	features.Partitions = false
	return Topology{
		Name: name,
		// The registry refuses bus.driver = "watermill" on it, as
		// Watermill is false: the new bus is neither driver.
		Validate: base.Validate,
		Features: features,
		Build: func(ctx context.Context, cfg *config.Config, logger *slog.Logger) (_ *Backend, err error) {
			if logger == nil {
				logger = slog.New(slog.DiscardHandler)
			}
			b, err := base.Build(ctx, cfg, logger)
			if err != nil {
				return nil, err
			}
			defer func() {
				if err != nil {
					err = errors.Join(err, b.Close())
				}
			}()
			pub, sub, closers, err := bus(ctx, cfg, logger)
			if err != nil {
				return nil, fmt.Errorf("%s bus: %w", name, err)
			}
			// base's own publisher and subscriber are left unused; what
			// they hold is in base's closers.
			b.Publisher, b.Subscriber = pub, sub
			b.Closers = append(b.Closers, closers...)
			return b, nil
		},
	}
}
