package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/router"
)

// The workers job measures how the nats topology scales out: N observe
// processes (routers with role = "observe", in this process) share a
// stream split into workersPartitions partitions, for N = 1, 2 and 3.
// The workers start first and the clock starts once each holds its share
// of the partitions; then the events are published (the bus publisher,
// in batches) and the run ends when the last one was handled. It is
// opt-in (--scenarios workers): in one process on a small machine the
// workers share its cores, so the figures show the cost of the partition
// hand-off more than a gain.

// ScenarioWorkers names the workers job in Options.Scenarios.
const ScenarioWorkers = "workers"

// workersTopology is the topology the workers job runs on.
const workersTopology = "nats"

// workersPartitions is nats.partitions of the job's runs: 12, as in the
// example config, dealt evenly to 1, 2 and 3 workers.
const workersPartitions = 12

// workerCounts are the runs of the job.
var workerCounts = []int{1, 2, 3}

// WorkersJob is what the workers job measured.
type WorkersJob struct {
	Title      string        `json:"title"`
	Status     string        `json:"status"`
	Partitions int           `json:"partitions"`
	Runs       []*WorkersRun `json:"runs"`
}

// WorkersRun is one run of the workers job.
type WorkersRun struct {
	Workers int      `json:"workers"`
	Figures *Figures `json:"figures"`
	// Handled is the number of events each worker handled.
	Handled []int `json:"handled"`
}

// workersSelected reports whether the workers job runs.
func (s *suite) workersSelected() bool {
	return s.selected(ScenarioWorkers) && slices.Contains(s.opts.Topologies, workersTopology)
}

// workersJob runs the job, one run per worker count.
func (s *suite) workersJob(ctx context.Context) *WorkersJob {
	n := s.opts.events()
	s.goRuntime(workersTopology)
	j := &WorkersJob{
		Title: fmt.Sprintf("%s events published to the %s topology with %d partitions, handled by a no-op action in 1, 2 and 3 observe processes",
			num(float64(n)), workersTopology, workersPartitions),
		Partitions: workersPartitions, Runs: []*WorkersRun{}, Status: StatusMeasured,
	}
	if !s.available(workersTopology) {
		j.Status = StatusNotAvailable
		return j
	}
	for _, workers := range workerCounts {
		run := &WorkersRun{Workers: workers}
		j.Runs = append(j.Runs, run)
		run.Figures = s.measure(ctx, fmt.Sprintf("workers %d", workers), n, 0, "", func(ctx context.Context, r *recorder, w *window) error {
			var err error
			run.Handled, err = s.runWorkers(ctx, r, n, workers, w)
			return err
		})
		if run.Figures.Error != "" {
			j.Status = StatusFailed
		}
	}
	return j
}

// runWorkers starts workers observe routers on one run's config, waits
// until the partitions are dealt, publishes n events and returns, once
// rec has them all, how many each worker handled.
func (s *suite) runWorkers(ctx context.Context, rec *recorder, n, workers int, w *window) (handled []int, err error) {
	spec := topoSpec{name: workersTopology, ceiling: ceilJetStreamServer} // no sources: events are published
	env, err := s.prepare(ctx, spec, false)
	defer s.cleanup(spec, env)
	if err != nil {
		return nil, err
	}
	defer s.record(env.id, rec)()
	cfg, err := s.config(spec, env, config.Action{"type": noopType, "run": env.id}, scenarioSpec{dedupCache: true})
	if err != nil {
		return nil, err
	}
	cfg.Role = "observe"
	cfg.NATS.Partitions = workersPartitions
	// A round of the partition deal takes a third of the TTL.
	cfg.NATS.PartitionTTL = config.Duration(3 * time.Second)

	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make([]error, workers)
	defer func() {
		stop()
		wg.Wait()
		err = errors.Join(append([]error{err}, errs...)...)
	}()
	routers := make([]*router.Router, workers)
	counters := make([]*partitionCounter, workers)
	for i := range workers {
		counters[i] = &partitionCounter{next: s.logger.Handler(), n: &counter{}}
		ready := make(chan string, 1)
		wcfg := *cfg
		r, err := router.New(&wcfg, router.Options{Actions: s.opts.Actions, Topologies: s.opts.Registry,
			Logger: slog.New(counters[i]).With("topology", workersTopology, "run", env.id, "worker", i), Ready: ready})
		if err != nil {
			return nil, err
		}
		routers[i] = r
		stopped := make(chan struct{})
		wg.Go(func() {
			defer close(stopped)
			errs[i] = r.Run(rctx)
		})
		select {
		case <-ready:
		case <-stopped:
			return nil, fmt.Errorf("worker %d stopped while starting", i)
		case <-time.After(readyTimeout):
			return nil, fmt.Errorf("worker %d not ready within %s", i, readyTimeout)
		}
	}
	if err := waitDealt(ctx, counters); err != nil {
		return nil, err
	}
	w.begin()
	rec.started(time.Now())
	produced := make(chan error, 1)
	go func() { produced <- s.prefill(rctx, cfg, n) }()
	err = wait(ctx, rec, w.limit, produced, nil, nil)
	w.end()
	// A message is counted handled after its action ran: the last counts
	// come a moment after the recorder saw every event.
	deadline := time.Now().Add(5 * time.Second)
	for {
		counts, total := make([]int, len(routers)), 0
		for i, r := range routers {
			counts[i] = int(metricValue(r, "millrace_events_total", "handled"))
			total += counts[i]
		}
		if err != nil || total >= n || time.Now().After(deadline) {
			return counts, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitDealt waits until each worker holds its share of the partitions.
func waitDealt(ctx context.Context, counters []*partitionCounter) error {
	share := workersPartitions / len(counters)
	deadline := time.Now().Add(60 * time.Second)
	for {
		dealt := true
		for _, c := range counters {
			dealt = dealt && c.held() == share
		}
		if dealt {
			return nil
		}
		if time.Now().After(deadline) {
			held := make([]int, len(counters))
			for i, c := range counters {
				held[i] = c.held()
			}
			return fmt.Errorf("the partitions were not dealt to the workers within 60s: they hold %v", held)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// metricValue is the value of a counter of r with the label value label
// (the first label), 0 when it has none.
func metricValue(r *router.Router, name, label string) float64 {
	mfs, err := r.Metrics().Registry.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if ls := m.GetLabel(); len(ls) > 0 && ls[0].GetValue() == label && m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// partitionCounter is a slog.Handler that counts the partitions a
// router holds from its partition log lines (bus/partition), and passes
// every record next would take on to it.
type partitionCounter struct {
	next slog.Handler
	n    *counter
}

// counter is shared by the handlers WithAttrs and WithGroup derive.
type counter struct {
	mu sync.Mutex
	n  int
}

func (c *partitionCounter) held() int {
	c.n.mu.Lock()
	defer c.n.mu.Unlock()
	return c.n.n
}

func (c *partitionCounter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || c.next.Enabled(ctx, l)
}

func (c *partitionCounter) Handle(ctx context.Context, r slog.Record) error {
	d := 0
	switch r.Message {
	case "partition: acquired":
		d = 1
	case "partition: released", "partition: lease lost to another worker; stopping the partition",
		"partition: cannot renew the lease; stopping the partition":
		d = -1
	}
	if d != 0 {
		c.n.mu.Lock()
		c.n.n += d
		c.n.mu.Unlock()
	}
	if c.next.Enabled(ctx, r.Level) {
		return c.next.Handle(ctx, r)
	}
	return nil
}

func (c *partitionCounter) WithAttrs(as []slog.Attr) slog.Handler {
	return &partitionCounter{next: c.next.WithAttrs(as), n: c.n}
}

func (c *partitionCounter) WithGroup(name string) slog.Handler {
	return &partitionCounter{next: c.next.WithGroup(name), n: c.n}
}

// workersMarkdown renders the workers job's section.
func (r *Results) workersMarkdown(p func(string, ...any)) {
	j := r.Workers
	p("## Workers\n\n%s. Status: %s.\n\n", j.Title, j.Status)
	p("| workers | events/s | p50 ms | p99 ms | CPU s/10k | events handled per worker |\n|---|---|---|---|---|---|\n")
	var errs []string
	for _, run := range j.Runs {
		f := run.Figures
		p("| %d | %s | %s | %s | %s | %v |\n", run.Workers, thr(f), ms3(f, f.Latency.P50), ms3(f, f.Latency.P99), cpu(f), run.Handled)
		if f.Error != "" {
			errs = append(errs, fmt.Sprintf("- %d workers: %s", run.Workers, f.Error))
		}
	}
	p("\n")
	if len(errs) > 0 {
		p("Failures:\n\n%s\n\n", strings.Join(errs, "\n"))
	}
}
