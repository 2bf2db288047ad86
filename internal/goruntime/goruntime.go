package goruntime

import (
	"fmt"
	"math"
	"runtime/debug"

	"github.com/millrace/millrace/config"
)

// Settings is what Apply left in force, and where each value came from.
type Settings struct {
	// GCPercent is the garbage collector's target.
	GCPercent int
	// GCFrom is "GOGC", "runtime.gc_percent", "topology" or "go" (Go's
	// default, 100).
	GCFrom string
	// MemoryLimit is the soft memory limit in bytes; 0 for none.
	MemoryLimit int64
	// LimitFrom is "GOMEMLIMIT", "runtime.memory_limit" or "" for none.
	LimitFrom string
}

// String is s as the bench reports it.
func (s Settings) String() string {
	limit := "no memory limit"
	if s.MemoryLimit > 0 {
		limit = "memory limit " + s.limit()
	}
	return fmt.Sprintf("gc_percent %d (%s), %s", s.GCPercent, s.GCFrom, limit)
}

// LogAttrs are s as log attributes.
func (s Settings) LogAttrs() []any {
	return []any{"gc_percent", s.GCPercent, "gc_percent_from", s.GCFrom, "memory_limit", s.limit()}
}

func (s Settings) limit() string {
	if s.MemoryLimit <= 0 {
		return "none"
	}
	return fmt.Sprintf("%d MB (%s)", s.MemoryLimit>>20, s.LimitFrom)
}

// Apply sets the garbage collector's target and the memory limit from
// rt, or topologyGC (0 for Go's default) where rt leaves the target to
// the topology. A value the environment sets (GOGC, GOMEMLIMIT, read
// through getenv) is left as the runtime read it at start. rt must have
// passed config validation.
func Apply(rt config.Runtime, topologyGC int, getenv func(string) string) (Settings, error) {
	var s Settings
	switch {
	case getenv("GOGC") != "":
		// Read back what the runtime took from GOGC.
		s.GCFrom = "GOGC"
		s.GCPercent = debug.SetGCPercent(100)
	case rt.GCPercent > 0:
		s.GCFrom, s.GCPercent = "runtime.gc_percent", rt.GCPercent
	case topologyGC > 0:
		s.GCFrom, s.GCPercent = "topology", topologyGC
	default:
		s.GCFrom, s.GCPercent = "go", 100
	}
	debug.SetGCPercent(s.GCPercent)
	switch {
	case getenv("GOMEMLIMIT") != "":
		s.LimitFrom = "GOMEMLIMIT"
		s.MemoryLimit = debug.SetMemoryLimit(-1)
	case rt.MemoryLimit != "":
		n, err := config.ParseSize(rt.MemoryLimit)
		if err != nil {
			return s, fmt.Errorf("runtime.memory_limit: %w", err)
		}
		s.LimitFrom, s.MemoryLimit = "runtime.memory_limit", n
		debug.SetMemoryLimit(n)
	default:
		debug.SetMemoryLimit(math.MaxInt64)
	}
	if s.MemoryLimit == math.MaxInt64 {
		s.MemoryLimit, s.LimitFrom = 0, ""
	}
	return s, nil
}
