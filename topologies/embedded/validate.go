package embedded

import (
	"errors"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
)

// Topology returns the "embedded" topology's registry entry: JetStream
// subjects for every topic, dead letters in a stream on disk, no
// partitions (one process).
func Topology() topologies.Topology {
	return topologies.Topology{
		Name: "embedded", Build: Build, Validate: Validate,
		Features: config.Features{Topics: true, DurableDeadLetters: true}, Watermill: true,
		GCPercent: GCPercent,
	}
}

// GCPercent is the garbage collector's target of an embedded process.
// Most of its live heap is the in-process JetStream server's file-store
// block caches, which hold what was written in the last seconds; at
// Go's 100 the heap grows to twice that before a collection. 50 kept
// the saturated bench runs at 131 to 133 MB peak RSS against 162 to
// 171 (no-op and signed webhook) for about 5 % more CPU per event
// (docs/performance.md, "Memory on the embedded topology").
const GCPercent = 50

// Validate checks the [embedded] section.
func Validate(cfg *config.Config) error {
	var errs []error
	e := cfg.Embedded
	if e.Port < 0 || e.Port > 65535 {
		errs = append(errs, config.Errorf("embedded.port", "must be a port number (0 picks a free one)"))
	}
	errs = append(errs, config.CheckPositive("embedded.max_age", e.MaxAge))
	if e.DataDir == "" {
		errs = append(errs, config.Errorf("embedded.data_dir", "must not be empty"))
	}
	if _, _, err := config.ParseSync(e.Sync); err != nil {
		errs = append(errs, config.Errorf("embedded.sync", "%v", err))
	}
	return errors.Join(errs...)
}
