package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/cmd/millrace/cli"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/webhook"
	"github.com/millrace/millrace/internal/bench"
	"github.com/millrace/millrace/internal/testenv"
)

// TestQuickSuite runs every scenario of every topology once with a few
// events: the topologies of this build through millrace, the others'
// ceilings only. It checks that the files are written and the figures
// are there, not what they are.
func TestQuickSuite(t *testing.T) {
	t.Parallel()
	o := cli.Defaults()
	if !slices.Contains(o.Actions.Names(), "webhook") {
		if err := webhook.Register(o.Actions); err != nil {
			t.Fatal(err)
		}
	}
	out := t.TempDir()
	var progress bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := bench.Run(ctx, bench.Options{
		Quick: true, OutDir: out, Actions: o.Actions, Registry: o.Topologies,
		PostgresURL: testenv.PostgresURL(), RedisURL: testenv.RedisURL(), NATSURL: testenv.NATSURL(),
		Progress: &progress,
	})
	if err != nil {
		t.Fatalf("Run: %v\nprogress:\n%s", err, progress.String())
	}

	if got := len(res.Topologies); got != len(bench.Topologies) {
		t.Fatalf("%d topologies in the results; want %d", got, len(bench.Topologies))
	}
	if res.Machine.Cores < 1 || res.GoVersion == "" || len(res.Modules) == 0 {
		t.Errorf("machine %+v, go %q, %d modules: want cores, the Go version and the modules", res.Machine, res.GoVersion, len(res.Modules))
	}
	measured := 0
	for _, top := range res.Topologies {
		for name, f := range map[string]*bench.Figures{"saturated": top.Ceiling.Saturation, "steady": top.Ceiling.Steady} {
			checkFigures(t, top.Name+" ceiling "+name, f)
		}
		if !top.Available {
			if top.Status != bench.StatusNotAvailable {
				t.Errorf("%s: status %q; want %q", top.Name, top.Status, bench.StatusNotAvailable)
			}
			continue
		}
		if top.Status != bench.StatusMeasured {
			t.Errorf("%s: status %q; want %q", top.Name, top.Status, bench.StatusMeasured)
		}
		for _, sc := range top.Scenarios {
			measured++
			checkFigures(t, top.Name+" "+sc.Name, sc.Figures)
			if sc.Ratio == nil || sc.Ratio.Throughput <= 0 || sc.Ratio.P99 <= 0 {
				t.Errorf("%s %s: ratio %+v; want positive ratios to the ceiling", top.Name, sc.Name, sc.Ratio)
			}
			if sc.Name == bench.ScenarioWebhook && (sc.Signed == nil || *sc.Signed != int64(sc.Figures.Events)) {
				t.Errorf("%s webhook: signed %v of %d deliveries; want all", top.Name, sc.Signed, sc.Figures.Events)
			}
		}
	}
	// The peer job: its ceiling, and each of its runs beside it.
	if res.PeerJob == nil {
		t.Fatal("no peer job in the results")
	}
	checkFigures(t, "peer ceiling", res.PeerJob.Ceiling)
	if len(res.PeerJob.References) == 0 {
		t.Error("the peer job quotes no reference figures")
	}
	for _, want := range []string{bench.PeerNoop, bench.PeerWebhook} {
		var sc *bench.Scenario
		for _, r := range res.PeerJob.Runs {
			if r.Name == want {
				sc = r
			}
		}
		if sc == nil {
			t.Errorf("peer job: no %s run", want)
			continue
		}
		checkFigures(t, "peer "+want, sc.Figures)
		if sc.Ratio == nil || sc.Ratio.Throughput <= 0 {
			t.Errorf("peer %s: ratio %+v; want a positive ratio to the ceiling", want, sc.Ratio)
		}
		if want == bench.PeerWebhook && (sc.Signed == nil || *sc.Signed != int64(sc.Figures.Events)) {
			t.Errorf("peer webhook: signed %v of %d deliveries; want all", sc.Signed, sc.Figures.Events)
		}
	}
	// The partition-cost pair: each side's runs, and their medians.
	if pc := res.PartitionCost; pc == nil {
		t.Error("no partition cost in the results")
	} else {
		if len(pc.Off) != 3 || len(pc.On) != 3 {
			t.Errorf("partition cost: %d runs without and %d with partitions; want 3 and 3", len(pc.Off), len(pc.On))
		}
		for i, f := range append(slices.Clone(pc.Off), pc.On...) {
			checkFigures(t, fmt.Sprintf("partition cost run %d", i+1), f)
		}
		if pc.CPURatio <= 0 || pc.OffMedian.Runs != 3 || pc.OnMedian.Runs != 3 {
			t.Errorf("partition cost: CPU ratio %v over medians %+v and %+v; want a ratio of two medians of 3", pc.CPURatio, pc.OffMedian, pc.OnMedian)
		}
	}
	if measured < 4 {
		t.Errorf("%d millrace runs measured; want every scenario of at least the embedded topology", measured)
	}
	checkCaptureModes(t, res)
	for _, tg := range res.Targets {
		if tg.Topology == "embedded" && tg.Status != bench.TargetMet && tg.Status != bench.TargetMissed {
			t.Errorf("embedded target %q: %s (%s); want it evaluated", tg.Name, tg.Status, tg.Note)
		}
	}

	var back bench.Results
	b, err := os.ReadFile(filepath.Join(out, bench.ResultsJSON))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("results.json: %v", err)
	}
	if len(back.Topologies) != len(res.Topologies) || len(back.Targets) != len(res.Targets) {
		t.Errorf("results.json holds %d topologies and %d targets; want %d and %d",
			len(back.Topologies), len(back.Targets), len(res.Topologies), len(res.Targets))
	}
	md, err := os.ReadFile(filepath.Join(out, bench.ResultsMD))
	if err != nil {
		t.Fatal(err)
	}
	wants := []string{"## Summary", "## Targets", "## Peer job", "Benthos", bench.ChartPNG,
		"## Capture: triggers and the write-ahead log", "throughput, capture = wal over capture = trigger",
		"## Partition cost", "## Pauses on the JetStream bus", "largest gap between two deliveries"}
	for _, top := range res.Topologies {
		wants = append(wants, "## "+top.Name)
		if !top.Available {
			wants = append(wants, bench.StatusNotAvailable)
		}
	}
	for _, want := range wants {
		if !strings.Contains(string(md), want) {
			t.Errorf("RESULTS.md lacks %q", want)
		}
	}
	f, err := os.Open(filepath.Join(out, bench.ChartPNG))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("chart.png: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 600 || b.Dy() < 300 {
		t.Errorf("chart.png is %dx%d; want a readable size", b.Dx(), b.Dy())
	}
	if !strings.Contains(progress.String(), "embedded noop") {
		t.Errorf("progress does not name the runs:\n%s", progress.String())
	}
}

func checkFigures(t *testing.T, name string, f *bench.Figures) {
	t.Helper()
	switch {
	case f == nil:
		t.Errorf("%s: no figures", name)
	case f.Error != "":
		t.Errorf("%s: %s", name, f.Error)
	case f.Delivered != int64(f.Events) || f.Events <= 0:
		t.Errorf("%s: %d of %d events delivered", name, f.Delivered, f.Events)
	case f.Throughput <= 0 || f.Seconds <= 0:
		t.Errorf("%s: throughput %v over %v s; want positive", name, f.Throughput, f.Seconds)
	case f.Latency.P50 <= 0 || f.Latency.P99 < f.Latency.P50 || f.Latency.Max < f.Latency.P99:
		t.Errorf("%s: latency %+v; want 0 < p50 <= p99 <= max", name, f.Latency)
	case f.CPUSeconds <= 0 || f.CPUPer10k <= 0:
		t.Errorf("%s: CPU %v s, %v s/10k; want positive", name, f.CPUSeconds, f.CPUPer10k)
	case f.PeakRSSMB <= 0:
		t.Errorf("%s: peak RSS %v MB; want positive", name, f.PeakRSSMB)
	case f.MaxGapMS <= 0 || f.MaxGapMS > f.Seconds*1000:
		t.Errorf("%s: largest gap between deliveries %v ms in a %v s run; want positive, within the run", name, f.MaxGapMS, f.Seconds)
	}
}

// TestOptionsRejected checks that bad options fail before anything runs.
func TestOptionsRejected(t *testing.T) {
	t.Parallel()
	for name, mod := range map[string]func(*bench.Options){
		"unknown topology": func(o *bench.Options) { o.Topologies = []string{"kafka"} },
		"negative rate":    func(o *bench.Options) { o.Rate = -1 },
		"unknown scenario": func(o *bench.Options) { o.Scenarios = []string{"peer", "bogus"} },
		"no registry":      func(o *bench.Options) { o.Registry = nil },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d := cli.Defaults()
			o := bench.Options{Quick: true, OutDir: t.TempDir(), Actions: d.Actions, Registry: d.Topologies}
			mod(&o)
			res, err := bench.Run(context.Background(), o)
			if err == nil || res != nil {
				t.Fatalf("Run = %v, %v; want an error and no results", res, err)
			}
			if entries, _ := os.ReadDir(o.OutDir); len(entries) > 0 {
				t.Errorf("Run wrote %d files for bad options", len(entries))
			}
		})
	}
}

// TestNoopTypeTaken checks that the suite refuses a registry that has
// its bench_noop type already: its runs would not be recorded. (The
// built-in noop of cli.Defaults() is another type.)
func TestNoopTypeTaken(t *testing.T) {
	t.Parallel()
	d := cli.Defaults()
	if err := handlers.Register(d.Actions, "bench_noop", func(context.Context, nopConfig, handlers.Deps) (handlers.Action, error) {
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	o := bench.Options{Quick: true, OutDir: t.TempDir(), Actions: d.Actions, Registry: d.Topologies, Topologies: []string{"embedded"}}
	if _, err := bench.Run(context.Background(), o); err == nil || !strings.Contains(err.Error(), "bench_noop") {
		t.Errorf("Run on a registry with a noop type: %v; want an error about the noop type", err)
	}
}

type nopConfig struct{}

func (nopConfig) Validate() error { return nil }

// checkCaptureModes checks the runs that compare the capture modes: on
// each topology whose sources may read the WAL (not postgres, not
// embedded), a no-op run with capture = "wal" beside the trigger run,
// both with the writer's time and PostgreSQL's CPU for the rows written.
func checkCaptureModes(t *testing.T, res *bench.Results) {
	t.Helper()
	for _, top := range res.Topologies {
		if !top.Available {
			continue
		}
		var trig, wal *bench.Scenario
		for _, sc := range top.Scenarios {
			switch sc.Name {
			case bench.ScenarioNoop:
				trig = sc
			case bench.ScenarioWAL:
				wal = sc
			}
		}
		switch top.Name {
		case "embedded", "postgres":
			if wal != nil {
				t.Errorf("%s: a run with capture = wal; want none (%s)", top.Name, map[bool]string{true: "its change log is the bus", false: "nothing is captured"}[top.Name == "postgres"])
			}
			if top.Name == "embedded" && trig != nil && trig.Figures.Capture != nil {
				t.Errorf("embedded: capture figures %+v on a run that publishes", trig.Figures.Capture)
			}
			continue
		}
		if wal == nil || trig == nil {
			t.Errorf("%s: runs %v; want %s beside %s", top.Name, top.Scenarios, bench.ScenarioWAL, bench.ScenarioNoop)
			continue
		}
		for mode, sc := range map[string]*bench.Scenario{"trigger": trig, "wal": wal} {
			c := sc.Figures.Capture
			switch {
			case c == nil:
				t.Errorf("%s %s: no capture figures", top.Name, sc.Name)
			case c.Mode != mode || c.Rows != int64(sc.Figures.Events) || c.WriteSeconds <= 0 || c.WritePer10k <= 0:
				t.Errorf("%s %s: capture %+v; want mode %s, %d rows and the time spent writing them", top.Name, sc.Name, c, mode, sc.Figures.Events)
			case c.PGProcesses == 0 || c.PGCPUSeconds < 0:
				t.Errorf("%s %s: capture %+v; want the CPU of the PostgreSQL processes serving the run", top.Name, sc.Name, c)
			}
		}
	}
}
