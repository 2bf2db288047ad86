package multidb

import (
	"context"
	"errors"
	"log/slog"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
)

// Register adds the "multidb" topology to r.
func Register(r *topologies.Registry) error { return r.Register(Topology()) }

// Build is topologies.BuildJetStream, the nats topology's, for a config with at least one source; each source
// keeps its own reader (see the package doc).
func Build(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*topologies.Backend, error) {
	if len(cfg.Sources) == 0 {
		return nil, errors.New("multidb: the config has no [[sources]]")
	}
	if logger != nil && len(cfg.Sources) == 1 {
		logger.Info("multidb: one source only; the nats topology does the same")
	}
	return topologies.BuildJetStream(ctx, cfg, logger)
}
