package goruntime_test

import (
	"math"
	"runtime/debug"
	"testing"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/internal/goruntime"
)

// restore puts back the runtime's settings as the test found them.
func restore(t *testing.T) {
	gc := debug.SetGCPercent(100)
	debug.SetGCPercent(gc)
	limit := debug.SetMemoryLimit(-1)
	t.Cleanup(func() {
		debug.SetGCPercent(gc)
		debug.SetMemoryLimit(limit)
	})
}

func env(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

func current() (int, int64) {
	gc := debug.SetGCPercent(100)
	debug.SetGCPercent(gc)
	return gc, debug.SetMemoryLimit(-1)
}

func TestApply(t *testing.T) {
	restore(t)
	tests := []struct {
		name      string
		rt        config.Runtime
		topology  int
		env       map[string]string
		wantGC    int
		gcFrom    string
		wantLimit int64
		limitFrom string
	}{
		{"go's default", config.Runtime{}, 0, nil, 100, "go", 0, ""},
		{"the topology's", config.Runtime{}, 400, nil, 400, "topology", 0, ""},
		{"the config's over the topology's", config.Runtime{GCPercent: 250, MemoryLimit: "512MB"}, 400, nil, 250, "runtime.gc_percent", 512 << 20, "runtime.memory_limit"},
		{"the environment's over the config's", config.Runtime{GCPercent: 250, MemoryLimit: "512MB"}, 400,
			map[string]string{"GOGC": "150", "GOMEMLIMIT": "1GiB"}, 150, "GOGC", 1 << 30, "GOMEMLIMIT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != nil {
				// What the runtime would have read from the environment
				// at start.
				debug.SetGCPercent(150)
				debug.SetMemoryLimit(1 << 30)
			}
			s, err := goruntime.Apply(tt.rt, tt.topology, env(tt.env))
			if err != nil {
				t.Fatal(err)
			}
			if s.GCPercent != tt.wantGC || s.GCFrom != tt.gcFrom || s.MemoryLimit != tt.wantLimit || s.LimitFrom != tt.limitFrom {
				t.Errorf("settings = %+v, want gc %d from %q, limit %d from %q", s, tt.wantGC, tt.gcFrom, tt.wantLimit, tt.limitFrom)
			}
			gc, limit := current()
			if gc != tt.wantGC {
				t.Errorf("runtime gc percent = %d, want %d", gc, tt.wantGC)
			}
			if want := tt.wantLimit; (want == 0 && limit != math.MaxInt64) || (want != 0 && limit != want) {
				t.Errorf("runtime memory limit = %d, want %d", limit, want)
			}
		})
	}
}

// TestApplyUndoesTheLastTopology: the bench applies the settings of each
// topology in turn, in one process; a limit or target set for one must
// not stay for the next.
func TestApplyUndoesTheLastTopology(t *testing.T) {
	restore(t)
	if _, err := goruntime.Apply(config.Runtime{MemoryLimit: "256MB"}, 400, env(nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := goruntime.Apply(config.Runtime{}, 0, env(nil)); err != nil {
		t.Fatal(err)
	}
	if gc, limit := current(); gc != 100 || limit != math.MaxInt64 {
		t.Fatalf("after the second topology: gc %d, limit %d; want 100 and none", gc, limit)
	}
}
