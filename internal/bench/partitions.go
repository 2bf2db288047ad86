package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// The partition cost: what partitions cost one worker, measured on the
// peer job's no-op run (a pre-filled stream drained through dedup on the
// Redis ledger), which leaves nothing but the consumer on the clock. The
// run goes with nats.partitions = 0 and = partitionCostN in turn,
// partitionCostRepeats times each, and the medians are compared: the
// machine may be shared, and one pair is not enough to see 5 %.

// ScenarioPartitions is the partition-cost pair of runs.
const ScenarioPartitions = "partitions"

const (
	// partitionCostN is the partitions of the partitioned runs: the
	// number a deployment ships with.
	partitionCostN = 12
	// partitionCostRepeats is the runs of each kind.
	partitionCostRepeats = 3
	// maxPartitionCost is the most CPU per event the partitioned runs
	// may take over the unpartitioned ones.
	maxPartitionCost = 0.05
	// maxGapMS is the longest pause between two deliveries a run on the
	// JetStream bus may show.
	maxGapMS = 500
)

// PartitionCost is what the partition-cost runs measured.
type PartitionCost struct {
	Title      string `json:"title"`
	Status     string `json:"status"`
	Partitions int    `json:"partitions"`
	// Off and On are the runs with partitions off and on, in the order
	// they ran (one of each in turn).
	Off []*Figures `json:"off"`
	On  []*Figures `json:"on"`
	// OffMedian and OnMedian are the medians of the runs that delivered
	// every event.
	OffMedian Medians `json:"off_median"`
	OnMedian  Medians `json:"on_median"`
	// CPURatio is the partitioned median CPU per event over the
	// unpartitioned one (1.05: 5 % more); ThroughputRatio the same for
	// events/s. Zero when a side has no run that delivered everything.
	CPURatio        float64 `json:"cpu_ratio"`
	ThroughputRatio float64 `json:"throughput_ratio"`
}

// Medians are the medians of a set of runs.
type Medians struct {
	Runs       int     `json:"runs"`
	CPUPer10k  float64 `json:"cpu_s_per_10k_events"`
	Throughput float64 `json:"events_per_s"`
	MaxGapMS   float64 `json:"max_gap_ms"`
}

// partitionCostSelected reports whether the partition-cost runs are
// asked for; they run on the peer job's topology.
func (s *suite) partitionCostSelected() bool {
	return s.selected(ScenarioPartitions) && slices.Contains(s.opts.Topologies, peerTopology)
}

// partitionCost runs the pairs and compares their medians.
func (s *suite) partitionCost(ctx context.Context) *PartitionCost {
	n := s.opts.events()
	s.goRuntime(peerTopology)
	pc := &PartitionCost{
		Title: fmt.Sprintf("one worker draining a pre-filled stream (%s events) through dedup (Redis) into a no-op, "+
			"nats.partitions = %d against 0", num(float64(n)), partitionCostN),
		Partitions: partitionCostN, Off: []*Figures{}, On: []*Figures{},
	}
	if !s.available(peerTopology) {
		pc.Status = StatusNotAvailable
		return pc
	}
	pc.Status = StatusMeasured
	spec := topoSpec{name: peerTopology, ceiling: ceilJetStreamServer}
	for i := range partitionCostRepeats {
		for _, parts := range []int{0, partitionCostN} {
			if ctx.Err() != nil {
				break
			}
			sc := scenarioSpec{name: fmt.Sprintf("partitions_%d_%d", parts, i+1), action: noopType,
				dedupCache: true, noCache: true, prefilled: true, partitions: &parts}
			prof := ""
			if i == 0 {
				prof = s.profilePath(sc.name)
			}
			f := s.measure(ctx, sc.name, n, 0, prof, func(ctx context.Context, r *recorder, w *window) error {
				_, err := s.runMillrace(ctx, spec, sc, r, n, 0, w)
				return err
			})
			if f.Error != "" {
				pc.Status = StatusFailed
			}
			if parts == 0 {
				pc.Off = append(pc.Off, f)
			} else {
				pc.On = append(pc.On, f)
			}
		}
	}
	pc.OffMedian, pc.OnMedian = medians(pc.Off), medians(pc.On)
	if pc.OffMedian.Runs > 0 && pc.OnMedian.Runs > 0 {
		if pc.OffMedian.CPUPer10k > 0 {
			pc.CPURatio = round3(pc.OnMedian.CPUPer10k / pc.OffMedian.CPUPer10k)
		}
		if pc.OffMedian.Throughput > 0 {
			pc.ThroughputRatio = round3(pc.OnMedian.Throughput / pc.OffMedian.Throughput)
		}
	}
	return pc
}

// medians of the runs that delivered every event (time-boxed ones do
// not compare).
func medians(fs []*Figures) Medians {
	var cpu, thr, gap []float64
	for _, f := range fs {
		if f.ok() && !f.TimeBoxed {
			cpu, thr, gap = append(cpu, f.CPUPer10k), append(thr, f.Throughput), append(gap, f.MaxGapMS)
		}
	}
	return Medians{Runs: len(cpu), CPUPer10k: median(cpu), Throughput: median(thr), MaxGapMS: median(gap)}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return round3((v[len(v)/2-1] + v[len(v)/2]) / 2)
}

// partitionTargets are the partition cost and the longest pause of the
// runs on a JetStream bus.
func partitionTargets(res *Results) []Target {
	var out []Target
	if pc := res.PartitionCost; pc != nil {
		tg := Target{Topology: peerTopology, Name: fmt.Sprintf("CPU per event, one worker, partitions = %d over 0", pc.Partitions),
			Want: fmt.Sprintf("≤ %.2f×", 1+maxPartitionCost), Limit: 1 + maxPartitionCost}
		switch {
		case pc.Status == StatusNotAvailable:
			tg.Status, tg.Got, tg.Note = TargetNotMeasured, "—", "the topology is "+StatusNotAvailable
		case pc.CPURatio == 0:
			tg.Status, tg.Got, tg.Note = TargetNotMeasured, "—", "a side has no run that delivered every event"
		default:
			tg.Value, tg.Status = pc.CPURatio, TargetMet
			tg.Got = fmt.Sprintf("%s× (medians of %d: %s against %s CPU s / 10k)", dec(pc.CPURatio), partitionCostRepeats,
				dec(pc.OnMedian.CPUPer10k), dec(pc.OffMedian.CPUPer10k))
			if pc.CPURatio > 1+maxPartitionCost {
				tg.Status = TargetMissed
				tg.Note = fmt.Sprintf("events/s %s× (%s against %s)", dec(pc.ThroughputRatio),
					num(pc.OnMedian.Throughput), num(pc.OffMedian.Throughput))
			}
		}
		out = append(out, tg)
	}
	runs := jetStreamRuns(res)
	if len(runs) == 0 {
		return out
	}
	tg := Target{Topology: "JetStream bus", Name: "largest gap between two deliveries, every run",
		Want: fmt.Sprintf("≤ %d ms", maxGapMS), Limit: maxGapMS, Status: TargetMet}
	worst := runs[0]
	for _, r := range runs {
		if r.f.MaxGapMS > worst.f.MaxGapMS {
			worst = r
		}
	}
	tg.Value, tg.Got = worst.f.MaxGapMS, fmt.Sprintf("%s ms (%s)", dec(worst.f.MaxGapMS), worst.name)
	if worst.f.MaxGapMS > maxGapMS {
		tg.Status = TargetMissed
	}
	return append(out, tg)
}

// namedFigures is one run's figures and where it ran.
type namedFigures struct {
	name string
	f    *Figures
}

// jetStreamRuns are the runs on a JetStream bus that delivered events:
// the embedded, nats and multidb topologies' runs, the peer job's, the
// workers job's, the partition-cost runs.
func jetStreamRuns(res *Results) []namedFigures {
	var out []namedFigures
	add := func(name string, f *Figures) {
		if f != nil && f.Delivered > 0 && f.Error == "" {
			out = append(out, namedFigures{name, f})
		}
	}
	for _, t := range res.Topologies {
		if t.Name != "embedded" && t.Name != "nats" && t.Name != "multidb" {
			continue
		}
		for _, sc := range t.Scenarios {
			add(t.Name+" "+sc.Name, sc.Figures)
		}
	}
	if pj := res.PeerJob; pj != nil {
		for _, sc := range pj.Runs {
			add(sc.Name, sc.Figures)
		}
	}
	if wj := res.Workers; wj != nil {
		for _, run := range wj.Runs {
			add(fmt.Sprintf("workers %d", run.Workers), run.Figures)
		}
	}
	if pc := res.PartitionCost; pc != nil {
		for i, f := range pc.Off {
			add(fmt.Sprintf("partitions 0, run %d", i+1), f)
		}
		for i, f := range pc.On {
			add(fmt.Sprintf("partitions %d, run %d", pc.Partitions, i+1), f)
		}
	}
	return out
}

// partitionMarkdown renders the partition-cost runs and the pauses of
// every run.
func (r *Results) partitionMarkdown(p func(string, ...any)) {
	if pc := r.PartitionCost; pc != nil {
		p("## Partition cost\n\n")
		p("What partitions cost one worker: %s. The runs alternate; the medians of the runs that delivered every event are compared, "+
			"CPU per event first (the machine may be shared, which events/s feel more). Status: %s.\n\n", pc.Title, pc.Status)
		p("| partitions | run | events/s | CPU s / 10k | largest gap ms | cores busy (process / machine) |\n|--:|--:|--:|--:|--:|--:|\n")
		var errs []string
		row := func(parts, i int, f *Figures) {
			if f.Error != "" {
				errs = append(errs, fmt.Sprintf("- partitions %d, run %d: %s", parts, i, f.Error))
			}
			p("| %d | %d | %s | %s | %s | %s / %s |\n", parts, i, thr(f), cpu(f), ms3(f, f.MaxGapMS), dec(f.CoresBusy), dec(f.MachineBusy))
		}
		for i := range max(len(pc.Off), len(pc.On)) {
			if i < len(pc.Off) {
				row(0, i+1, pc.Off[i])
			}
			if i < len(pc.On) {
				row(pc.Partitions, i+1, pc.On[i])
			}
		}
		for _, m := range []struct {
			parts int
			m     Medians
		}{{0, pc.OffMedian}, {pc.Partitions, pc.OnMedian}} {
			p("| %d | median of %d | %s | %s | %s |  |\n", m.parts, m.m.Runs, num(m.m.Throughput), dec(m.m.CPUPer10k), dec(m.m.MaxGapMS))
		}
		p("\n")
		if pc.CPURatio > 0 {
			p("Partitions = %d over 0: CPU per event %s×, events/s %s×.\n\n", pc.Partitions, dec(pc.CPURatio), dec(pc.ThroughputRatio))
		}
		if len(errs) > 0 {
			p("Failures:\n\n%s\n\n", strings.Join(errs, "\n"))
		}
	}
	if runs := jetStreamRuns(r); len(runs) > 0 {
		p("## Pauses on the JetStream bus\n\n")
		p("The longest time between two consecutive deliveries of each run on a JetStream bus: a consumer that stops pulling "+
			"shows here even when the throughput hides it. Target: ≤ %d ms.\n\n", maxGapMS)
		p("| run | largest gap ms | events |\n|---|--:|--:|\n")
		for _, run := range runs {
			p("| %s | %s | %s |\n", run.name, dec(run.f.MaxGapMS), num(float64(run.f.Delivered)))
		}
		p("\n")
	}
}
