package router

import (
	"errors"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/engine"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/topologies"
)

// Check checks a config that config.Load accepted against the
// registries, without I/O: the topology key and the sections the
// topology checks itself, then every observer's actions, including what
// they need of the rest of the config and of the topology's features. It
// returns every problem, each a *config.Error with its key path. It is
// what `millrace validate` adds to config.Load, and New runs it too.
func Check(cfg *config.Config, actions *handlers.Registry, topos *topologies.Registry) error {
	return errors.Join(topos.Check(cfg), engine.Check(cfg, actions, topos.Features(cfg.Topology)))
}
