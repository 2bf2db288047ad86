package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"
)

// ceilingKind names the client-library job a topology is compared with.
type ceilingKind int

const (
	ceilJetStreamInProcess ceilingKind = iota // nats-server in this process
	ceilJetStreamServer                       // the NATS server at NATSURL
	ceilRedisStreams
	ceilPostgres
)

// topoSpec is how the suite drives one topology.
type topoSpec struct {
	name string
	// sources is the number of PostgreSQL databases captured (as
	// schemas of the one server); 0 means the events are published
	// through the router instead.
	sources int
	ceiling ceilingKind
}

func (t topoSpec) capture() bool { return t.sources > 0 }

// walCapture reports whether the topology's sources may capture from
// the write-ahead log: every capturing topology but postgres, whose
// change log is the bus.
func (t topoSpec) walCapture() bool { return t.capture() && t.name != "postgres" }

// Topologies are the topologies the suite knows how to set up and
// measure, in the order it measures them. Each has an entry in specs.
var Topologies = []string{"embedded", "postgres", "redis", "nats", "multidb"}

var specs = map[string]topoSpec{
	"embedded": {name: "embedded", ceiling: ceilJetStreamInProcess},
	"postgres": {name: "postgres", sources: 1, ceiling: ceilPostgres},
	"redis":    {name: "redis", sources: 1, ceiling: ceilRedisStreams},
	"nats":     {name: "nats", sources: 1, ceiling: ceilJetStreamServer},
	"multidb":  {name: "multidb", sources: 2, ceiling: ceilJetStreamServer},
}

func (t topoSpec) sourceText() string {
	switch {
	case t.sources == 1:
		return fmt.Sprintf("capture: rows COPYed into a watched table, %d per transaction", batchSize)
	case t.sources > 1:
		return fmt.Sprintf("capture: rows COPYed into watched tables of %d databases (schemas), %d per transaction", t.sources, batchSize)
	}
	return fmt.Sprintf("publish: router.Router.Publish in batches of %d", batchSize)
}

// Scenario names.
const (
	// ScenarioCeiling is a topology's two ceiling runs, saturated and
	// at the steady rate.
	ScenarioCeiling    = "ceiling"
	ScenarioNoop       = "noop"
	ScenarioNoDedup    = "noop_no_dedup_cache"
	ScenarioWebhook    = "webhook"
	ScenarioSteadyNoop = "steady"
	// ScenarioWAL is the no-op run with capture = "wal": beside
	// ScenarioNoop (triggers) it compares the two capture modes.
	ScenarioWAL = "noop_wal"
	// ScenarioPeer is the peer job (peer.go): its ceiling and its runs.
	ScenarioPeer = "peer"
)

// Scenarios are the names Options.Scenarios may hold, in the order the
// suite runs them; every one but ScenarioWorkers runs by default.
var Scenarios = []string{ScenarioCeiling, ScenarioNoop, ScenarioNoDedup, ScenarioWebhook, ScenarioSteadyNoop, ScenarioWAL, ScenarioPeer,
	ScenarioWorkers, ScenarioPartitions}

// scenarioSpec is one millrace run of a topology.
type scenarioSpec struct {
	name, title string
	action      string // noopType or "webhook"
	dedupCache  bool
	noCache     bool // dedup without the result cache
	steady      bool // at Options.Rate instead of saturation
	wal         bool // capture = "wal"; only where topoSpec.walCapture
	// prefilled: the n events are on the bus before the router starts
	// (the peer job); nothing is published while the clock runs.
	prefilled bool
	// partitions, when set, replaces Options.Partitions for the run
	// (the partition-cost pair).
	partitions *int
}

var scenarios = []scenarioSpec{
	{name: ScenarioNoop, title: "no-op action, dedup and cache on, saturated", action: noopType, dedupCache: true},
	{name: ScenarioNoDedup, title: "no-op action, dedup and cache off, saturated", action: noopType},
	{name: ScenarioWebhook, title: "signed webhook to a local receiver, dedup and cache on, saturated", action: "webhook", dedupCache: true},
	{name: ScenarioSteadyNoop, title: "no-op action, dedup and cache on, steady rate", action: noopType, dedupCache: true, steady: true},
	{name: ScenarioWAL, title: "no-op action, dedup and cache on, saturated, capture = wal", action: noopType, dedupCache: true, wal: true},
}

// applies reports whether scenario sc runs on topology t.
func (sc scenarioSpec) applies(t topoSpec) bool { return !sc.wal || t.walCapture() }

// topology measures one topology: its ceiling, then, when the topology
// is in this build, each scenario.
func (s *suite) topology(ctx context.Context, name string) *Topology {
	spec := specs[name]
	t := &Topology{Name: name, Available: s.available(name), Source: spec.sourceText(), Scenarios: []*Scenario{},
		GoRuntime: s.goRuntime(name)}
	c := s.ceiling(spec)
	t.Ceiling.Name = c.name
	n, steadyN := s.opts.events(), s.opts.steadyEvents()
	if s.selected(ScenarioCeiling) {
		t.Ceiling.Saturation = s.measure(ctx, name+" ceiling, saturated", n, 0, "", func(ctx context.Context, r *recorder, w *window) error {
			return c.run(ctx, r, n, 0, w)
		})
		t.Ceiling.Steady = s.measure(ctx, name+fmt.Sprintf(" ceiling, %s/s", num(float64(s.opts.Rate))), steadyN, s.opts.Rate, "", func(ctx context.Context, r *recorder, w *window) error {
			return c.run(ctx, r, steadyN, s.opts.Rate, w)
		})
	}
	if !t.Available {
		t.Status = StatusNotAvailable
		for _, sc := range scenarios {
			if s.selected(sc.name) && sc.applies(spec) {
				t.Scenarios = append(t.Scenarios, &Scenario{Name: sc.name, Title: sc.title, Status: StatusNotAvailable})
			}
		}
		return t
	}
	t.Status = StatusMeasured
	for _, sc := range scenarios {
		if !s.selected(sc.name) || !sc.applies(spec) {
			continue
		}
		out := &Scenario{Name: sc.name, Title: sc.title}
		t.Scenarios = append(t.Scenarios, out)
		if ctx.Err() != nil {
			out.Status = StatusFailed
			continue
		}
		if sc.action == "webhook" && !s.webhookAvailable() {
			out.Status = StatusNotAvailable + " (no webhook action type)"
			continue
		}
		events, rate, ceil := n, 0, t.Ceiling.Saturation
		label := name + " " + sc.name
		if sc.steady {
			events, rate, ceil = steadyN, s.opts.Rate, t.Ceiling.Steady
			label += fmt.Sprintf(" %s/s", num(float64(rate)))
		}
		prof := ""
		if sc.name == ScenarioNoop || sc.name == ScenarioWAL {
			prof = s.profilePath(name + "-" + sc.name)
		}
		var signed *int64
		out.Figures = s.measure(ctx, label, events, rate, prof, func(ctx context.Context, r *recorder, w *window) error {
			var err error
			signed, err = s.runMillrace(ctx, spec, sc, r, events, rate, w)
			return err
		})
		out.Signed = signed
		out.Ceiling = ceil
		out.Ratio = ratio(out.Figures, ceil)
		out.Status = StatusMeasured
		if out.Figures.Error != "" {
			out.Status = StatusFailed
			t.Status = StatusFailed
		}
		if prof != "" && sc.name == ScenarioNoop && out.Figures.Error == "" {
			t.Profile = &Profile{File: prof, Top: pprofTop(ctx, prof)}
		}
	}
	return t
}

// window is the measured part of a run, between begin (load starts) and
// end (every event delivered): CPU time, peak RSS and, when asked for, a
// CPU profile.
type window struct {
	profile   string
	limit     time.Duration // of the wait for delivery; 0 is none
	prof      *os.File
	t0, t1    time.Time
	cpu0      time.Duration
	cpu1      time.Duration
	rss       int64
	mbusy     [2]int64 // machine busy ticks at begin, end
	mtotal    [2]int64
	capture   *CaptureCost // of a run that captures
	began     bool
	ended     bool
	profError error
}

func (w *window) begin() {
	if w.profile != "" {
		if err := os.MkdirAll(filepath.Dir(w.profile), 0o755); err != nil {
			w.profError = err
		} else if f, err := os.Create(w.profile); err != nil {
			w.profError = err
		} else if err := pprof.StartCPUProfile(f); err != nil {
			w.profError = err
			_ = f.Close()
		} else {
			w.prof = f
		}
		w.writeAllocs(".allocs-base.pprof")
	}
	w.mbusy[0], w.mtotal[0] = machineCPU()
	w.began, w.t0, w.cpu0 = true, time.Now(), cpuTime()
}

func (w *window) end() {
	if !w.began || w.ended {
		return
	}
	w.ended, w.t1, w.cpu1, w.rss = true, time.Now(), cpuTime(), peakRSS()
	w.mbusy[1], w.mtotal[1] = machineCPU()
	if w.prof != nil {
		pprof.StopCPUProfile()
		_ = w.prof.Close()
		w.writeAllocs(".allocs.pprof")
	}
}

// writeAllocs writes the heap's allocation counts so far beside the CPU
// profile, under its name with suffix: the run's allocations are the
// difference of the two written at its begin and end.
func (w *window) writeAllocs(suffix string) {
	f, err := os.Create(strings.TrimSuffix(w.profile, ".pprof") + suffix)
	if err == nil {
		err = pprof.Lookup("allocs").WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil && w.profError == nil {
		w.profError = err
	}
}

// measure runs one job of n events and turns its recorder and window
// into figures. The job calls w.begin when its load starts and w.end
// when it is delivered; a job that fails leaves its error in the
// figures.
func (s *suite) measure(ctx context.Context, label string, n, rate int, profile string, job func(context.Context, *recorder, *window) error) *Figures {
	rec := newRecorder(n)
	w := &window{profile: profile, limit: s.limit(rate > 0)}
	freeMemory()
	reset := resetPeakRSS()
	stop := s.prog.start(label, rec)
	err := job(ctx, rec, w)
	w.end()
	f := &Figures{Events: n, Delivered: rec.done.Load(), Duplicates: rec.dups.Load(), RSSReset: reset, Capture: w.capture}
	if errors.Is(err, errTimeBoxed) && f.Delivered > 0 {
		f.TimeBoxed, err = true, nil
	}
	if el := rec.elapsed(); el > 0 {
		f.Seconds = round3(el.Seconds())
		if f.Delivered == int64(n) || f.TimeBoxed {
			f.Throughput = round3(float64(f.Delivered) / el.Seconds())
		}
	}
	f.Latency = rec.latency()
	f.MaxGapMS = ms(rec.gap.Load())
	if w.began {
		cpu := (w.cpu1 - w.cpu0).Seconds()
		f.CPUSeconds = round3(cpu)
		if f.Delivered > 0 {
			f.CPUPer10k = round3(cpu * 10000 / float64(f.Delivered))
		}
		if wall := w.t1.Sub(w.t0).Seconds(); wall > 0 {
			f.CoresBusy = round3(cpu / wall)
		}
		f.PeakRSSMB = round3(float64(w.rss) / (1 << 20))
		if dt := w.mtotal[1] - w.mtotal[0]; dt > 0 {
			f.MachineBusy = round3(float64(w.mbusy[1]-w.mbusy[0]) / float64(dt) * float64(runtime.NumCPU()))
		}
	}
	if err == nil && f.Delivered < int64(n) && !f.TimeBoxed {
		err = fmt.Errorf("%d of %d events delivered", f.Delivered, n)
	}
	if err != nil {
		f.Error = err.Error()
		s.logger.Warn("bench run failed", "run", label, "err", err)
	}
	if w.profError != nil {
		s.logger.Warn("bench: cpu profile", "err", w.profError)
	}
	summary := fmt.Sprintf("%s: %s events/s, p99 %s ms, %s CPU s/10k, peak RSS %s MB",
		label, num(f.Throughput), dec(f.Latency.P99), dec(f.CPUPer10k), dec(f.PeakRSSMB))
	if f.TimeBoxed {
		summary += fmt.Sprintf(" (time-boxed at %s of %s events)", num(float64(f.Delivered)), num(float64(n)))
	}
	if f.Error != "" {
		summary = fmt.Sprintf("%s: failed: %s", label, f.Error)
	}
	stop(summary)
	return f
}

// Limits on waiting for a run.
const (
	// stallTimeout ends a run that delivered nothing for this long.
	stallTimeout = 30 * time.Second
	// readyTimeout bounds the start of a router.
	readyTimeout = 60 * time.Second
)

// errTimeBoxed ends a saturated run that used up its share of the
// suite's time budget: its figures are those of the events delivered
// until then.
var errTimeBoxed = errors.New("time-boxed")

// wait returns when every event of rec was delivered, or with an error
// when ctx ends, the producer fails, stopped (a closed channel) ends
// first, nothing arrives for stallTimeout, or limit (if not zero) passed.
func wait(ctx context.Context, rec *recorder, limit time.Duration, produced <-chan error, stopped <-chan struct{}, stoppedErr func() error) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var timeUp <-chan time.Time
	if limit > 0 {
		t := time.NewTimer(limit)
		defer t.Stop()
		timeUp = t.C
	}
	last, lastAt := rec.done.Load(), time.Now()
	for {
		select {
		case <-rec.all:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case err := <-produced:
			if err != nil {
				return fmt.Errorf("producer: %w", err)
			}
			produced = nil
		case <-stopped:
			if err := stoppedErr(); err != nil {
				return fmt.Errorf("stopped before every event was delivered: %w", err)
			}
			return errors.New("stopped before every event was delivered")
		case <-timeUp:
			return errTimeBoxed
		case <-tick.C:
			if d := rec.done.Load(); d != last {
				last, lastAt = d, time.Now()
			} else if time.Since(lastAt) > stallTimeout {
				return fmt.Errorf("stalled: %d of %d events delivered, none in the last %s", d, rec.n, stallTimeout)
			}
		}
	}
}

// pprofTop returns the top entries of a CPU profile, by own time and
// by cumulated time, through the go command when it is on PATH; nil
// otherwise.
func pprofTop(ctx context.Context, file string) []string {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var lines []string
	for i, args := range [][]string{{"-top", "-nodecount=15"}, {"-top", "-cum", "-nodecount=25"}} {
		out, err := exec.CommandContext(ctx, goCmd, append(append([]string{"tool", "pprof"}, args...), file)...).Output()
		if err != nil {
			return nil
		}
		if i > 0 {
			lines = append(lines, "", "$ go tool pprof "+strings.Join(args, " "))
		} else {
			lines = append(lines, "$ go tool pprof "+strings.Join(args, " "))
		}
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if i > 0 && !strings.HasPrefix(strings.TrimSpace(l), "flat") && !strings.Contains(l, "%") {
				continue // the header once is enough
			}
			if strings.HasPrefix(l, "File:") || strings.HasPrefix(l, "Build ID:") || strings.HasPrefix(l, "Type:") || strings.HasPrefix(l, "Time:") {
				continue
			}
			lines = append(lines, strings.TrimRight(l, " "))
		}
	}
	return lines
}
