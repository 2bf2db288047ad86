//go:build !linux

package bench

import (
	"runtime/metrics"
	"time"
)

// cpuTime is the runtime's estimate of the CPU time of the process.
func cpuTime() time.Duration {
	s := []metrics.Sample{{Name: "/cpu/classes/total:cpu-seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64 {
		return 0
	}
	return time.Duration(s[0].Value.Float64() * float64(time.Second))
}

// resetPeakRSS is not possible here.
func resetPeakRSS() bool { return false }

// peakRSS is approximated by the memory the Go runtime mapped.
func peakRSS() int64 {
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return int64(s[0].Value.Uint64())
}

// loadAverage is not known here.
func loadAverage() float64 { return -1 }

// machineCPU is not known here.
func machineCPU() (busy, total int64) { return 0, 0 }

// procCPU is not measured here.
func procCPU(int) (time.Duration, bool) { return 0, false }
