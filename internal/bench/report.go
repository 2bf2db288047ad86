package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/millrace/millrace/config"
)

// write writes results.json, RESULTS.md and chart.png into dir.
func (r *Results) write(dir string) error {
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: results: %w", err)
	}
	png, cerr := r.Chart()
	errs := []error{
		writeFile(filepath.Join(dir, ResultsJSON), append(js, '\n')),
		writeFile(filepath.Join(dir, ResultsMD), []byte(r.Markdown())),
	}
	if cerr != nil {
		errs = append(errs, fmt.Errorf("bench: chart: %w", cerr))
	} else {
		errs = append(errs, writeFile(filepath.Join(dir, ChartPNG), png))
	}
	return errors.Join(errs...)
}

// writeFile replaces path atomically, so that an interrupted run leaves
// the previous file whole.
func writeFile(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

// keyModules are the modules RESULTS.md names; results.json lists all.
var keyModules = []string{
	"github.com/ThreeDotsLabs/watermill", "github.com/nats-io/nats.go", "github.com/nats-io/nats-server/v2",
	"github.com/redis/go-redis/v9", "github.com/jackc/pgx/v5",
}

// Markdown renders the results as RESULTS.md.
func (r *Results) Markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# millrace benchmark results\n\n")
	p("Measured by `millrace-bench` on %s UTC, in %s s.\n\n", r.Date.Format("2006-01-02 15:04"), dec(r.DurationS))
	p("- Machine: %d cores (%s/%s, GOMAXPROCS %d); 1-minute load average %s at the start, %s at the end.\n",
		r.Machine.Cores, r.Machine.OS, r.Machine.Arch, r.Machine.GOMAXPROCS, load(r.Machine.LoadStart), load(r.Machine.LoadEnd))
	p("- Runs: %s events per saturated run, %s events at %s events/s for the steady run; %d-byte `data`; batches of %d.\n",
		num(float64(r.Settings.Events)), num(float64(r.Settings.SteadyEvents)), num(float64(r.Settings.Rate)),
		r.Settings.PayloadBytes, r.Settings.BatchSize)
	if r.Settings.Partitions > 0 {
		p("- Partitions: `nats.partitions` and `redis.partitions` = %d on the topologies with partitions (order per entity across worker processes).\n", r.Settings.Partitions)
	}
	if r.Settings.EmbeddedSync != "" && r.Settings.EmbeddedSync != config.SyncAlways {
		p("- `embedded.sync` = %q on the embedded runs and their ceiling: the server forces its writes to disk every %s, not before each acknowledgement.\n",
			r.Settings.EmbeddedSync, r.Settings.EmbeddedSync)
	}
	if r.Settings.BusDriver == config.DriverWatermill {
		p("- `bus.driver` = \"watermill\" on the topologies that have one: the upstream Watermill Pub/Sub as the bus (docs/drivers.md), without partitions.\n")
	}
	if r.Settings.BudgetS > 0 {
		p("- Budget: %s s for the whole suite; a saturated run that used up its share reports the events delivered until then (time-boxed).\n", dec(r.Settings.BudgetS))
	}
	p("- Build: %s", r.GoVersion)
	for _, m := range r.Modules {
		for _, k := range keyModules {
			if m.Path == k {
				p(", %s %s", strings.TrimPrefix(m.Path, "github.com/"), m.Version)
			}
		}
	}
	p(" (every module in `results.json`).\n\n")
	if r.Settings.Quick {
		p("**A --quick run: too few events for the figures to mean anything.**\n\n")
	}
	if r.Machine.LoadStart > float64(r.Machine.Cores) {
		p("**The machine was busy with other work when the run started (load average %s on %d cores): the figures are low and noisy.**\n\n",
			load(r.Machine.LoadStart), r.Machine.Cores)
	}
	p("How to read and reproduce these figures: [docs/performance.md](../docs/performance.md). " +
		"A ratio is millrace's figure over the ceiling's: the same publish-then-consume job written straight on the client library.\n\n")
	p("![Throughput and p99 latency per topology, beside the ceilings](%s)\n\n", ChartPNG)

	p("## Summary\n\n")
	p("| topology | status | no-op events/s | ceiling | ratio | p99 at %s/s | ceiling p99 | dedup + cache cost | peak RSS |\n",
		num(float64(r.Settings.Rate)))
	p("|---|---|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, t := range r.Topologies {
		noop, steady := t.scenario(ScenarioNoop), t.scenario(ScenarioSteadyNoop)
		off := figures(t, ScenarioNoDedup)
		cost := "—"
		if noop != nil && noop.Figures.ok() && off.ok() && off.Throughput > 0 {
			cost = fmt.Sprintf("%.1f %%", (1-noop.Figures.Throughput/off.Throughput)*100)
		}
		rss := 0.0
		for _, sc := range t.Scenarios {
			if sc.Figures.ok() {
				rss = max(rss, sc.Figures.PeakRSSMB)
			}
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", t.Name, t.Status,
			thr(figOf(noop)), thr(t.Ceiling.Saturation), ratioText(noop, func(x *Ratio) float64 { return x.Throughput }),
			p99(figOf(steady)), p99(t.Ceiling.Steady), cost, mb(rss))
	}
	p("\n")
	p("%s", r.captureMarkdown())

	for _, t := range r.Topologies {
		p("## %s\n\n", t.Name)
		if t.Available {
			p("Status: %s. Events enter by %s. Ceiling: %s. Go runtime: %s.\n\n", t.Status, t.Source, t.Ceiling.Name, t.GoRuntime)
		} else {
			p("millrace: %s; its events would enter by %s. Ceiling, measured all the same: %s.\n\n", StatusNotAvailable, t.Source, t.Ceiling.Name)
		}
		p("| run | events/s | ceiling | ratio | p50 ms | p95 ms | p99 ms | ceiling p99 | ratio | CPU s / 10k | ceiling | cores busy (process / machine) | peak RSS MB |\n")
		p("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
		var errs []string
		for _, sc := range t.Scenarios {
			if !t.Available {
				break
			}
			f := sc.Figures
			if f == nil {
				p("| %s | %s |  |  |  |  |  |  |  |  |  |  |  |\n", sc.Title, sc.Status)
				continue
			}
			if f.Error != "" {
				errs = append(errs, fmt.Sprintf("- %s: %s", sc.Title, f.Error))
			}
			c := sc.Ceiling
			extra := ""
			if f.TimeBoxed {
				extra = fmt.Sprintf(" (time-boxed: %s of %s events)", num(float64(f.Delivered)), num(float64(f.Events)))
			}
			if sc.Signed != nil {
				extra = fmt.Sprintf(" (%s of %s signed)", num(float64(*sc.Signed)), num(float64(f.Events)))
			}
			p("| %s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s |\n", sc.Title, extra,
				thr(f), thr(c), ratioText(sc, func(x *Ratio) float64 { return x.Throughput }),
				ms3(f, f.Latency.P50), ms3(f, f.Latency.P95), ms3(f, f.Latency.P99), ms3(c, figP99(c)),
				ratioText(sc, func(x *Ratio) float64 { return x.P99 }),
				cpu(f), cpu(c), dec(f.CoresBusy), dec(f.MachineBusy), mb(f.PeakRSSMB))
		}
		for _, c := range []struct {
			title string
			f     *Figures
		}{{"ceiling, saturated", t.Ceiling.Saturation}, {fmt.Sprintf("ceiling, %s events/s", num(float64(r.Settings.Rate))), t.Ceiling.Steady}} {
			if c.f == nil {
				continue
			}
			if c.f.Error != "" {
				errs = append(errs, fmt.Sprintf("- %s: %s", c.title, c.f.Error))
			}
			if c.f.TimeBoxed {
				c.title += fmt.Sprintf(" (time-boxed: %s of %s events)", num(float64(c.f.Delivered)), num(float64(c.f.Events)))
			}
			p("| %s | %s |  |  | %s | %s | %s |  |  | %s |  | %s / %s | %s |\n", c.title, thr(c.f),
				ms3(c.f, c.f.Latency.P50), ms3(c.f, c.f.Latency.P95), ms3(c.f, c.f.Latency.P99), cpu(c.f),
				dec(c.f.CoresBusy), dec(c.f.MachineBusy), mb(c.f.PeakRSSMB))
		}
		p("\n")
		if len(errs) > 0 {
			p("Failures:\n\n%s\n\n", strings.Join(errs, "\n"))
		}
		if t.Profile != nil {
			p("CPU profile of the no-op run: `%s`", filepath.ToSlash(t.Profile.File))
			if len(t.Profile.Top) > 0 {
				p(" (`go tool pprof -top`):\n\n```\n%s\n```\n\n", strings.Join(t.Profile.Top, "\n"))
			} else {
				p(" (read it with `go tool pprof -top %s`).\n\n", filepath.ToSlash(t.Profile.File))
			}
		}
	}

	if r.PeerJob != nil {
		r.peerMarkdown(p)
	}
	if r.Workers != nil {
		r.workersMarkdown(p)
	}
	r.partitionMarkdown(p)

	p("## Targets\n\n")
	met, missed := 0, 0
	for _, tg := range r.Targets {
		switch tg.Status {
		case TargetMet:
			met++
		case TargetMissed:
			missed++
		}
	}
	p("%d met, %d missed, %d not measured.\n\n", met, missed, len(r.Targets)-met-missed)
	p("| topology | target | wanted | measured | status | note |\n|---|---|---|---|---|---|\n")
	for _, tg := range r.Targets {
		p("| %s | %s | %s | %s | **%s** | %s |\n", tg.Topology, tg.Name, tg.Want, tg.Got, tg.Status, tg.Note)
	}
	return b.String()
}

func figOf(sc *Scenario) *Figures {
	if sc == nil {
		return nil
	}
	return sc.Figures
}

func figP99(f *Figures) float64 {
	if f == nil {
		return 0
	}
	return f.Latency.P99
}

func thr(f *Figures) string {
	if !f.ok() {
		return "—"
	}
	return num(f.Throughput)
}

func p99(f *Figures) string {
	if !f.ok() {
		return "—"
	}
	return dec(f.Latency.P99) + " ms"
}

func ms3(f *Figures, v float64) string {
	if !f.ok() {
		return "—"
	}
	return dec(v)
}

func cpu(f *Figures) string {
	if f == nil || f.CPUPer10k == 0 {
		return "—"
	}
	return dec(f.CPUPer10k)
}

func mb(v float64) string {
	if v == 0 {
		return "—"
	}
	return dec(v)
}

func load(v float64) string {
	if v < 0 {
		return "unknown"
	}
	return dec(v)
}

func ratioText(sc *Scenario, pick func(*Ratio) float64) string {
	if sc == nil || sc.Ratio == nil {
		return "—"
	}
	return fmt.Sprintf("%.2f", pick(sc.Ratio))
}

// peerMarkdown renders the peer job's section.
func (r *Results) peerMarkdown(p func(string, ...any)) {
	pj := r.PeerJob
	p("## Peer job\n\n")
	p("The job users compare routers on: a %s. millrace runs on the `%s` topology, dedup on its Redis ledger, the result cache off "+
		"(the peer's job has none). Ceiling: %s, in the same run. Go runtime: %s. Status: %s. "+
		"Latency runs from the publish, before the clock started: it measures how the backlog drains, not one event's path "+
		"(the steady-rate runs above are the ones to read for latency).\n\n", pj.Title, peerTopology, pj.CeilingName, pj.GoRuntime, pj.Status)
	p("| run | events/s | ratio to the ceiling | p50 ms | p99 ms | CPU s / 10k | ceiling CPU s / 10k | cores busy (process / machine) | peak RSS MB |\n")
	p("|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	var errs []string
	for _, sc := range pj.Runs {
		f := sc.Figures
		if f == nil {
			p("| %s | %s |  |  |  |  |  |  |  |\n", sc.Title, sc.Status)
			continue
		}
		if f.Error != "" {
			errs = append(errs, fmt.Sprintf("- %s: %s", sc.Title, f.Error))
		}
		extra := ""
		if sc.Signed != nil {
			extra = fmt.Sprintf(" (%s of %s signed)", num(float64(*sc.Signed)), num(float64(f.Events)))
		}
		p("| %s%s | %s | %s | %s | %s | %s | %s | %s / %s | %s |\n", sc.Title, extra, thr(f),
			ratioText(sc, func(x *Ratio) float64 { return x.Throughput }), ms3(f, f.Latency.P50), ms3(f, f.Latency.P99),
			cpu(f), cpu(pj.Ceiling), dec(f.CoresBusy), dec(f.MachineBusy), mb(f.PeakRSSMB))
	}
	if c := pj.Ceiling; c != nil {
		if c.Error != "" {
			errs = append(errs, "- ceiling: "+c.Error)
		}
		p("| ceiling | %s |  | %s | %s | %s |  | %s / %s | %s |\n", thr(c), ms3(c, c.Latency.P50), ms3(c, c.Latency.P99),
			cpu(c), dec(c.CoresBusy), dec(c.MachineBusy), mb(c.PeakRSSMB))
	}
	for _, ref := range pj.References {
		p99 := ""
		if ref.P99MS > 0 {
			p99 = dec(ref.P99MS)
		}
		p("| %s: %s (%s) | %s |  |  | %s |  |  |  |  |\n", ref.Name, ref.Job, ref.Source, num(ref.EventsPerS), p99)
	}
	p("\n")
	if len(errs) > 0 {
		p("Failures:\n\n%s\n\n", strings.Join(errs, "\n"))
	}
}
