package bench

import (
	"testing"
	"time"
)

// TestRecorderGap: the largest gap is the longest wait between two
// consecutive deliveries, not the time before the first.
func TestRecorderGap(t *testing.T) {
	r := newRecorder(3)
	r.started(time.Now().Add(-time.Hour))
	r.mark(0, time.Now())
	time.Sleep(40 * time.Millisecond)
	r.mark(1, time.Now())
	r.mark(2, time.Now())
	if g := time.Duration(r.gap.Load()); g < 40*time.Millisecond || g > time.Second {
		t.Errorf("gap %v; want the 40 ms between the first two deliveries", g)
	}
}

// TestPartitionTargets: the partition cost is met within 5 % more CPU
// per event, the pause target by the longest gap of every JetStream run.
func TestPartitionTargets(t *testing.T) {
	run := func(cpu, gap float64) *Figures {
		return &Figures{Events: 10, Delivered: 10, Throughput: 100, CPUPer10k: cpu, MaxGapMS: gap}
	}
	for _, c := range []struct {
		name           string
		off, on        []*Figures
		cost, pauses   string
		ratio, worstMS float64
	}{
		{"within", []*Figures{run(1.0, 20), run(1.2, 30), run(0.9, 10)}, []*Figures{run(1.04, 40), run(5, 20), run(0.8, 30)},
			TargetMet, TargetMet, 1.04, 40},
		{"over", []*Figures{run(1.0, 20), run(1.0, 30), run(1.0, 10)}, []*Figures{run(1.1, 40), run(1.1, 600), run(1.1, 30)},
			TargetMissed, TargetMissed, 1.1, 600},
	} {
		t.Run(c.name, func(t *testing.T) {
			pc := &PartitionCost{Status: StatusMeasured, Partitions: 12, Off: c.off, On: c.on,
				OffMedian: medians(c.off), OnMedian: medians(c.on)}
			pc.CPURatio = round3(pc.OnMedian.CPUPer10k / pc.OffMedian.CPUPer10k)
			tgs := partitionTargets(&Results{PartitionCost: pc})
			if len(tgs) != 2 {
				t.Fatalf("%d targets; want the cost and the pauses", len(tgs))
			}
			if tgs[0].Status != c.cost || tgs[0].Value != c.ratio {
				t.Errorf("cost: %s at %v; want %s at %v", tgs[0].Status, tgs[0].Value, c.cost, c.ratio)
			}
			if tgs[1].Status != c.pauses || tgs[1].Value != c.worstMS {
				t.Errorf("pauses: %s at %v ms; want %s at %v ms", tgs[1].Status, tgs[1].Value, c.pauses, c.worstMS)
			}
		})
	}
}
