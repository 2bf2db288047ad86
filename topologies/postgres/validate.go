package postgres

import (
	"errors"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
)

// Topology returns the "postgres" topology's registry entry. Its bus is
// the change log, which carries router.topic only: it has no topics for
// the publish action. Dead letters are a table.
func Topology() topologies.Topology {
	return topologies.Topology{
		Name: "postgres", Build: Build, Validate: Validate,
		Features: config.Features{DurableDeadLetters: true, SourcesAreBus: true},
	}
}

// Validate checks the [postgres] section and that there is a change log
// to read: a [[sources]] entry or postgres.url.
func Validate(cfg *config.Config) error {
	var errs []error
	p := cfg.Postgres
	if p.URL != "" && p.URLEnv != "" {
		errs = append(errs, config.Errorf("postgres", "set at most one of url and url_env"))
	}
	if len(cfg.Sources) == 0 && p.URL == "" && p.URLEnv == "" {
		errs = append(errs, config.Errorf("postgres", "the postgres topology needs a [[sources]] entry or postgres.url / postgres.url_env"))
	}
	for i, s := range cfg.Sources {
		if s.Capture == config.CaptureWAL {
			errs = append(errs, config.Errorf(config.Index("sources", i)+".capture",
				"\"wal\" is not available on the postgres topology, whose change log is the bus: use capture = \"trigger\", or the nats or redis topology to read the write-ahead log"))
		}
	}
	errs = append(errs, config.CheckName("postgres.group", p.Group), config.CheckSchema("postgres.schema", p.Schema))
	return errors.Join(errs...)
}
