package bench

import (
	"fmt"
	"strings"
)

// walSpeedupTargets are the end-to-end events/s that capture = "wal"
// must reach, as a multiple of the trigger capture's, per topology.
var walSpeedupTargets = map[string]float64{"nats": 1.5}

// walTarget compares the no-op run with capture = "wal" to the one with
// triggers.
func walTarget(t *Topology, lim float64, res *Results) Target {
	tg := Target{Topology: t.Name, Name: "throughput, capture = wal over capture = trigger",
		Want: fmt.Sprintf("≥ %.1f ×", lim), Limit: lim}
	trig, wal := figures(t, ScenarioNoop), figures(t, ScenarioWAL)
	switch {
	case !trig.ok() || trig.Throughput <= 0:
		notMeasured(&tg, t, ScenarioNoop)
		return tg
	case !wal.ok():
		notMeasured(&tg, t, ScenarioWAL)
		return tg
	}
	x := wal.Throughput / trig.Throughput
	tg.Value = round3(x)
	tg.Got = fmt.Sprintf("%.2f × (%s and %s events/s)", x, num(wal.Throughput), num(trig.Throughput))
	tg.Status = TargetMet
	if x < lim {
		tg.Status = TargetMissed
		tg.Note = "with capture = wal " + busy(wal, res)
	}
	return tg
}

// captureMarkdown is the section of RESULTS.md that compares the two
// capture modes, run by run; empty when no topology ran both.
func (r *Results) captureMarkdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	for _, t := range r.Topologies {
		wal := t.scenario(ScenarioWAL)
		if wal == nil || !t.Available {
			continue
		}
		if b.Len() == 0 {
			p("## Capture: triggers and the write-ahead log\n\n")
			p("The saturated no-op run with dedup and cache, once per capture mode. *Write s / 10k* is the load generator's " +
				"time in its COPY transactions (commit included) per 10,000 rows: what the capture adds to the user's writes. " +
				"*PostgreSQL CPU s / 10k* is the user + system CPU of the server processes that served the run " +
				"(the writer's and millrace's backends and, with WAL capture, the walsender; `/proc/<pid>/stat`), per 10,000 rows; " +
				"shared background processes (WAL writer, checkpointer, autovacuum) are not in it. " +
				"*Process CPU s / 10k* is the bench process's: millrace and the load generator. " +
				"*NATS* and *Redis CPU s / 10k* are those servers' whole processes, when they run on this machine " +
				"(the bus's and the ledger's work for the run, and anything else they served meanwhile). " +
				"*Machine CPU s / 10k* is every core's busy time over the run (`/proc/stat`): " +
				"on a CPU-bound machine, the events/s of the two modes stand in the inverse ratio of this figure.\n\n")
			p("| topology | capture | events/s | write s / 10k | PostgreSQL CPU s / 10k (processes) | process CPU s / 10k | NATS CPU s / 10k | Redis CPU s / 10k | machine CPU s / 10k | p99 ms | events/s over triggers |\n")
			p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
		}
		trig := t.scenario(ScenarioNoop)
		for _, sc := range []*Scenario{trig, wal} {
			f := figOf(sc)
			mode, write, pg := "—", "—", "—"
			srv := map[string]string{"nats": "—", "redis": "—"}
			if f != nil && f.Capture != nil {
				c := f.Capture
				mode, write = c.Mode, dec(c.WritePer10k)
				if c.PGProcesses > 0 {
					pg = fmt.Sprintf("%s (%d)", dec(c.PGCPUPer10k), c.PGProcesses)
				}
				for _, s := range c.Servers {
					srv[s.Server] = dec(s.Per10k)
				}
			}
			machine := "—"
			if f.ok() && f.MachineBusy > 0 && f.Throughput > 0 {
				machine = dec(f.MachineBusy / f.Throughput * 10000)
			}
			x := "—"
			if sc == wal && f.ok() && figOf(trig).ok() && trig.Figures.Throughput > 0 {
				x = fmt.Sprintf("%.2f", f.Throughput/trig.Figures.Throughput)
			}
			p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", t.Name, mode, thr(f), write, pg, cpu(f),
				srv["nats"], srv["redis"], machine, ms3(f, figP99(f)), x)
		}
	}
	if b.Len() > 0 {
		p("\n")
	}
	return b.String()
}
