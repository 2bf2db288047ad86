package multidb

import (
	"errors"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
)

// Topology returns the "multidb" topology's registry entry: the nats
// topology's features, and its checks plus at least one source.
func Topology() topologies.Topology {
	return topologies.Topology{
		Name: "multidb", Build: Build, Validate: Validate,
		Features: topologies.JetStreamFeatures(), Notes: topologies.JetStreamNotes, Watermill: true,
		GCPercent: topologies.ServicesGCPercent,
	}
}

// Validate checks the [nats] section and that there is a source.
func Validate(cfg *config.Config) error {
	var errs []error
	errs = append(errs, topologies.ValidateNATS(cfg))
	if len(cfg.Sources) == 0 {
		errs = append(errs, config.Errorf("sources", "the multidb topology needs at least one [[sources]] entry"))
	}
	return errors.Join(errs...)
}
