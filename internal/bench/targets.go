package bench

import (
	"fmt"
	"strings"
)

// The project's performance targets, on a 2-core machine with the
// services on the same machine, dedup and cache on, no-op action.
var (
	// throughputTargets are the no-op events/s per topology.
	throughputTargets = map[string]float64{
		"nats": 20_000, "multidb": 20_000, "redis": 20_000, "postgres": 5_000,
	}
	// cpuTargets are the CPU seconds per 10k events of the no-op run
	// (ScenarioNoop) and of the signed webhook run (ScenarioWebhook).
	cpuTargets = []struct {
		topology, scenario string
		lim                float64
	}{
		{"embedded", ScenarioNoop, 0.7}, {"postgres", ScenarioNoop, 0.9}, {"redis", ScenarioNoop, 1.2}, {"nats", ScenarioNoop, 1.3},
		{"multidb", ScenarioNoop, 1.3}, {"nats", ScenarioWebhook, 2.0},
	}
	// ceilingThroughputTargets are the no-op run's events/s over its
	// ceiling's in the same run, for a topology whose events/s are the
	// disk's: the embedded JetStream server is in the process and syncs
	// each message to disk (embedded.sync = always), both runs wait for
	// it, and its sync time differs threefold from machine to machine.
	// 0.78 is the inverse of the embedded CPU bound (0.7 s/10k over the
	// 0.547 of the ceiling it was first set against).
	ceilingThroughputTargets = map[string]float64{"embedded": 0.78}
	// webhookTargets are the events/s with the signed webhook action.
	webhookTargets = map[string]float64{"nats": 10_000}
	// p99Targets are the p99 latencies at the steady rate, in ms.
	p99Targets = map[string]float64{"embedded": 20, "nats": 20, "redis": 20, "postgres": 50}
	// peerTargets are the events/s of the peer job's runs: 1.5 times
	// what Benthos reached on the same job (peerReferences).
	peerTargets = []struct {
		run string
		lim float64
	}{{PeerNoop, 40_000}, {PeerWebhook, 14_000}}
)

const (
	// maxDedupCost is the largest share of throughput that dedup and the
	// result cache may cost.
	maxDedupCost = 0.25
	// maxRSSMB is the largest peak RSS of a run.
	maxRSSMB = 150
)

// evaluate checks every target that concerns a topology of the run.
func evaluate(res *Results) []Target {
	out := []Target{}
	for _, t := range res.Topologies {
		if lim, ok := throughputTargets[t.Name]; ok {
			out = append(out, minTarget(t, ScenarioNoop, "throughput, no-op action", lim, res))
		}
		if lim, ok := ceilingThroughputTargets[t.Name]; ok {
			out = append(out, ceilingTarget(t, lim, res))
		}
		for _, ct := range cpuTargets {
			if ct.topology == t.Name {
				out = append(out, cpuTarget(t, ct.scenario, ct.lim, res))
			}
		}
		if lim, ok := webhookTargets[t.Name]; ok {
			tg := minTarget(t, ScenarioWebhook, "throughput, signed webhook", lim, res)
			if sc := t.scenario(ScenarioWebhook); tg.Status == TargetMet && sc != nil && sc.Signed != nil && *sc.Signed < sc.Figures.Delivered {
				tg.Status = TargetMissed
				tg.Note = fmt.Sprintf("only %d of %d deliveries carried a valid signature", *sc.Signed, sc.Figures.Delivered)
			}
			out = append(out, tg)
		}
		if lim, ok := p99Targets[t.Name]; ok {
			tg := Target{Topology: t.Name, Name: fmt.Sprintf("p99 latency at %s events/s", num(float64(res.Settings.Rate))),
				Want: fmt.Sprintf("≤ %s ms", dec(lim)), Limit: lim}
			if f := figures(t, ScenarioSteadyNoop); f.ok() {
				tg.Value = f.Latency.P99
				tg.Got = dec(f.Latency.P99) + " ms"
				tg.Status = TargetMet
				if f.Latency.P99 > lim {
					tg.Status = TargetMissed
					tg.Note = fmt.Sprintf("p50 %s ms, p95 %s ms; %s", dec(f.Latency.P50), dec(f.Latency.P95), busy(f, res))
				}
			} else {
				notMeasured(&tg, t, ScenarioSteadyNoop)
			}
			out = append(out, tg)
		}
		if lim, ok := walSpeedupTargets[t.Name]; ok {
			out = append(out, walTarget(t, lim, res))
		}
		out = append(out, dedupTarget(t, res), rssTarget(t, res))
	}
	if p := res.PeerJob; p != nil {
		for _, pt := range peerTargets {
			out = append(out, peerTarget(p, pt.run, pt.lim, res))
		}
	}
	return append(out, partitionTargets(res)...)
}

// peerTarget checks one run of the peer job against its events/s.
func peerTarget(p *PeerJob, run string, lim float64, res *Results) Target {
	tg := Target{Topology: "peer job (" + peerTopology + ")", Name: "throughput, " + run, Want: "≥ " + num(lim) + " events/s", Limit: lim}
	sc := p.run(run)
	if sc == nil || !sc.Figures.ok() {
		tg.Status, tg.Got = TargetNotMeasured, "—"
		switch {
		case p.Status == StatusNotAvailable:
			tg.Note = "the topology is " + StatusNotAvailable
		case sc == nil:
			tg.Note = "no such run"
		case sc.Figures != nil && sc.Figures.Error != "":
			tg.Note = "the run failed: " + sc.Figures.Error
		default:
			tg.Note = sc.Status
		}
		return tg
	}
	f := sc.Figures
	tg.Value, tg.Got, tg.Status = f.Throughput, num(f.Throughput)+" events/s", TargetMet
	if f.Throughput < lim {
		tg.Status = TargetMissed
		tg.Note = busy(f, res)
		if sc.Ratio != nil {
			tg.Note += fmt.Sprintf("; %.0f %% of the ceiling (%s events/s)", sc.Ratio.Throughput*100, num(p.Ceiling.Throughput))
		}
	}
	return tg
}

func figures(t *Topology, scenario string) *Figures {
	if sc := t.scenario(scenario); sc != nil {
		return sc.Figures
	}
	return nil
}

func minTarget(t *Topology, scenario, name string, lim float64, res *Results) Target {
	tg := Target{Topology: t.Name, Name: name, Want: "≥ " + num(lim) + " events/s", Limit: lim}
	f := figures(t, scenario)
	if !f.ok() {
		notMeasured(&tg, t, scenario)
		return tg
	}
	tg.Value, tg.Got, tg.Status = f.Throughput, num(f.Throughput)+" events/s", TargetMet
	if f.Throughput < lim {
		tg.Status = TargetMissed
		tg.Note = busy(f, res)
		if sc := t.scenario(scenario); sc != nil && sc.Ratio != nil {
			tg.Note += fmt.Sprintf("; %.0f %% of the ceiling (%s events/s)", sc.Ratio.Throughput*100, num(sc.Ceiling.Throughput))
		}
		if scenario == ScenarioNoop && t.Profile != nil && len(t.Profile.Top) > 0 {
			tg.Note += "; the CPU profile's top entries are under the " + t.Name + " table"
		}
	}
	return tg
}

// actionNames name the action of the runs that targets concern.
var actionNames = map[string]string{ScenarioNoop: "no-op action", ScenarioWebhook: "signed webhook"}

// cpuTarget checks the CPU seconds per 10k events of one run.
func cpuTarget(t *Topology, scenario string, lim float64, res *Results) Target {
	tg := Target{Topology: t.Name, Name: "CPU per 10k events, " + actionNames[scenario], Want: "≤ " + dec(lim) + " s", Limit: lim}
	f := figures(t, scenario)
	if !f.ok() {
		notMeasured(&tg, t, scenario)
		return tg
	}
	tg.Value, tg.Got, tg.Status = f.CPUPer10k, dec(f.CPUPer10k)+" s", TargetMet
	if f.CPUPer10k > lim {
		tg.Status, tg.Note = TargetMissed, busy(f, res)
		if sc := t.scenario(scenario); sc != nil && sc.Ratio != nil {
			tg.Note += fmt.Sprintf("; the ceiling's %s s (%.2f ×)", dec(sc.Ceiling.CPUPer10k), sc.Ratio.CPUPer10k)
			if sc.Ceiling.CPUPer10k > lim {
				tg.Note += ": the ceiling alone is over the target on this machine"
			}
		}
	}
	return tg
}

// ceilingTarget checks the no-op run's events/s against the same run's
// ceiling.
func ceilingTarget(t *Topology, lim float64, res *Results) Target {
	tg := Target{Topology: t.Name, Name: "throughput, no-op action, over the ceiling's",
		Want: fmt.Sprintf("≥ %.2f ×", lim), Limit: lim}
	sc := t.scenario(ScenarioNoop)
	if sc == nil || sc.Ratio == nil {
		notMeasured(&tg, t, ScenarioNoop)
		if sc != nil && sc.Figures.ok() {
			tg.Note = "the ceiling was not measured"
		}
		return tg
	}
	tg.Value, tg.Status = sc.Ratio.Throughput, TargetMet
	tg.Got = fmt.Sprintf("%.2f × (%s against %s events/s)", sc.Ratio.Throughput, num(sc.Figures.Throughput), num(sc.Ceiling.Throughput))
	if sc.Ratio.Throughput < lim {
		tg.Status, tg.Note = TargetMissed, busy(sc.Figures, res)
	}
	return tg
}

func dedupTarget(t *Topology, res *Results) Target {
	tg := Target{Topology: t.Name, Name: "dedup + cache cost", Want: fmt.Sprintf("≤ %.0f %% of throughput", maxDedupCost*100),
		Limit: maxDedupCost * 100}
	on, off := figures(t, ScenarioNoop), figures(t, ScenarioNoDedup)
	switch {
	case !on.ok():
		notMeasured(&tg, t, ScenarioNoop)
		return tg
	case !off.ok() || off.Throughput <= 0:
		notMeasured(&tg, t, ScenarioNoDedup)
		return tg
	}
	cost := (1 - on.Throughput/off.Throughput) * 100
	tg.Value = round3(cost)
	tg.Got = fmt.Sprintf("%.1f %% (%s on, %s off events/s)", cost, num(on.Throughput), num(off.Throughput))
	tg.Status = TargetMet
	if cost > maxDedupCost*100 {
		tg.Status = TargetMissed
		tg.Note = fmt.Sprintf("CPU per 10k events %s s with, %s s without; %s", dec(on.CPUPer10k), dec(off.CPUPer10k), busy(on, res))
	}
	return tg
}

func rssTarget(t *Topology, res *Results) Target {
	tg := Target{Topology: t.Name, Name: fmt.Sprintf("peak RSS, %s-event run", num(float64(res.Settings.Events))),
		Want: fmt.Sprintf("≤ %d MB", maxRSSMB), Limit: maxRSSMB}
	var peak float64
	var reset, any bool
	for _, sc := range t.Scenarios {
		if f := sc.Figures; f.ok() {
			any = true
			reset = f.RSSReset
			peak = max(peak, f.PeakRSSMB)
		}
	}
	if !any {
		notMeasured(&tg, t, ScenarioNoop)
		return tg
	}
	tg.Value, tg.Got, tg.Status = peak, dec(peak)+" MB", TargetMet
	if !reset {
		tg.Got += " (peak of the whole process: it could not be reset)"
	}
	if peak > maxRSSMB {
		tg.Status = TargetMissed
		tg.Note = "the process's peak, load generator and receivers included"
	}
	if res.Settings.Events != 50_000 {
		tg.Note = strings.TrimPrefix(tg.Note+fmt.Sprintf("; the target is for 50,000 events, this run had %s", num(float64(res.Settings.Events))), "; ")
	}
	return tg
}

func notMeasured(tg *Target, t *Topology, scenario string) {
	tg.Status, tg.Got = TargetNotMeasured, "—"
	switch sc := t.scenario(scenario); {
	case !t.Available:
		tg.Note = "the topology is " + StatusNotAvailable
	case sc == nil:
		tg.Note = "no such run"
	case sc.Figures != nil && sc.Figures.Error != "":
		tg.Note = "the run failed: " + sc.Figures.Error
	default:
		tg.Note = sc.Status
	}
}

// busy says whether the CPU was the saturated resource during a run:
// the machine's cores, shared by this process, the services and
// whatever else runs there.
func busy(f *Figures, res *Results) string {
	cores := float64(res.Machine.Cores)
	s := fmt.Sprintf("this process kept %s of %d cores busy, the whole machine %s", dec(f.CoresBusy), res.Machine.Cores, dec(f.MachineBusy))
	switch {
	case f.MachineBusy >= 0.9*cores && f.CoresBusy < 0.6*f.MachineBusy:
		return s + ": CPU-bound, with most of it outside this process (services, other load)"
	case f.MachineBusy >= 0.9*cores:
		return s + ": CPU-bound"
	case f.MachineBusy >= 0.6*cores:
		return s + ": partly CPU-bound"
	}
	return s + ": not CPU-bound, waiting on round trips or polling"
}
