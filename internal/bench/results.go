package bench

import (
	"runtime"
	"runtime/debug"
	"sort"
	"time"
)

// Results is what one run of the suite measured; results.json is its
// JSON form.
type Results struct {
	Date       time.Time   `json:"date"`
	Machine    Machine     `json:"machine"`
	GoVersion  string      `json:"go_version"`
	Modules    []Module    `json:"modules"`
	Settings   Settings    `json:"settings"`
	Topologies []*Topology `json:"topologies"`
	// PeerJob is the job users compare routers on (peer.go); nil when
	// it did not run.
	PeerJob *PeerJob `json:"peer_job,omitempty"`
	// Workers is the scale-out job (workers.go); nil when it did not
	// run.
	Workers *WorkersJob `json:"workers,omitempty"`
	// PartitionCost compares one worker with and without partitions
	// (partitions.go); nil when it did not run.
	PartitionCost *PartitionCost `json:"partition_cost,omitempty"`
	Targets       []Target       `json:"targets"`
	DurationS     float64        `json:"duration_s"`
}

// Machine describes where the suite ran. The load averages tell whether
// something else competed for the cores.
type Machine struct {
	Cores      int     `json:"cores"`
	GOMAXPROCS int     `json:"gomaxprocs"`
	OS         string  `json:"os"`
	Arch       string  `json:"arch"`
	LoadStart  float64 `json:"load_avg_1m_start"`
	LoadEnd    float64 `json:"load_avg_1m_end"`
}

// Module is a module the binary was built with.
type Module struct {
	Path    string `json:"path"`
	Version string `json:"version"`
}

// Settings are the sizes of the runs.
type Settings struct {
	Events       int  `json:"events"`
	SteadyEvents int  `json:"steady_events"`
	PayloadBytes int  `json:"payload_bytes"`
	Rate         int  `json:"rate_per_s"`
	BatchSize    int  `json:"batch_size"`
	Quick        bool `json:"quick"`
	// BudgetS bounds the suite; saturated runs may be time-boxed.
	BudgetS    float64 `json:"budget_s,omitempty"`
	CPUProfile bool    `json:"cpu_profile"`
	// Partitions is nats.partitions and redis.partitions of the runs.
	Partitions int `json:"partitions"`
	// EmbeddedSync is embedded.sync of the embedded runs and their
	// ceiling.
	EmbeddedSync string `json:"embedded_sync"`
	// BusDriver is bus.driver of the runs on topologies with an upstream
	// Watermill driver.
	BusDriver string `json:"bus_driver"`
	// Scenarios are the runs asked for (Options.Scenarios).
	Scenarios []string `json:"scenarios"`
}

// Statuses of a topology and of a scenario.
const (
	StatusMeasured     = "measured"
	StatusNotAvailable = "not available in this build"
	StatusFailed       = "failed"
)

// Topology is everything measured on one topology.
type Topology struct {
	Name string `json:"name"`
	// Available tells whether the topology is registered in this build.
	Available bool   `json:"available"`
	Status    string `json:"status"`
	// Source says how the events entered the pipeline.
	Source string `json:"source"`
	// GoRuntime is the garbage collector's settings of the topology's
	// runs and its ceiling's (package goruntime).
	GoRuntime string      `json:"go_runtime"`
	Ceiling   Ceiling     `json:"ceiling"`
	Scenarios []*Scenario `json:"scenarios"`
	// Profile is the CPU profile of the no-op run, when asked for.
	Profile *Profile `json:"profile,omitempty"`
}

// scenario returns the scenario called name, or nil.
func (t *Topology) scenario(name string) *Scenario {
	for _, s := range t.Scenarios {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Ceiling is the same job written straight on the client library.
type Ceiling struct {
	// Name says which library and how.
	Name       string   `json:"name"`
	Saturation *Figures `json:"saturation"`
	Steady     *Figures `json:"steady"`
}

// Scenario is one millrace run and the ceiling it is compared with.
type Scenario struct {
	Name   string `json:"name"`
	Title  string `json:"title"`
	Status string `json:"status"`
	// Figures are millrace's; Ceiling the matching ceiling run's
	// (saturated, or at the same steady rate); Ratio millrace over
	// ceiling.
	Figures *Figures `json:"figures,omitempty"`
	Ceiling *Figures `json:"ceiling,omitempty"`
	Ratio   *Ratio   `json:"ratio,omitempty"`
	// Signed counts the webhook deliveries whose signature the receiver
	// verified.
	Signed *int64 `json:"signed,omitempty"`
}

// Figures are the measurements of one run.
type Figures struct {
	// Events were sent; Delivered reached the action (each counted once);
	// Duplicates are further deliveries of a delivered event.
	Events     int   `json:"events"`
	Delivered  int64 `json:"delivered"`
	Duplicates int64 `json:"duplicates"`
	// Seconds runs from the first send to the last delivery.
	Seconds    float64 `json:"seconds"`
	Throughput float64 `json:"events_per_s"`
	// Latency runs from each event's timestamp (commit or publish time)
	// to its delivery to the action.
	Latency Latency `json:"latency"`
	// MaxGapMS is the longest time between two consecutive deliveries:
	// a consumer that stops pulling for a while shows here.
	MaxGapMS float64 `json:"max_gap_ms"`
	// CPUSeconds is the CPU time of the whole process during the run
	// (load generator and receivers included); CoresBusy is CPUSeconds
	// over the run's wall time.
	CPUSeconds float64 `json:"cpu_s"`
	CPUPer10k  float64 `json:"cpu_s_per_10k_events"`
	CoresBusy  float64 `json:"cores_busy"`
	// MachineBusy is how many cores the whole machine kept busy during
	// the run: this process, the services, and anything else running.
	MachineBusy float64 `json:"machine_cores_busy"`
	// PeakRSSMB is the peak resident set of the process during the run
	// (since its start when RSSReset is false).
	PeakRSSMB float64 `json:"peak_rss_mb"`
	RSSReset  bool    `json:"rss_reset"`
	// TimeBoxed is set when the run used up its share of the time
	// budget: the figures are those of the Delivered events.
	TimeBoxed bool `json:"time_boxed,omitempty"`
	// Capture is what capturing the changes cost, for a run whose
	// events were rows written to watched tables.
	Capture *CaptureCost `json:"capture,omitempty"`
	Error   string       `json:"error,omitempty"`
}

// ok reports whether the run has figures: every event was delivered, or
// some were when its time ran out.
func (f *Figures) ok() bool {
	return f != nil && f.Error == "" && (f.Delivered == int64(f.Events) || f.TimeBoxed && f.Delivered > 0)
}

// Ratio is millrace's figure over the ceiling's: below 1 for throughput
// means slower, above 1 for latency and CPU means more.
type Ratio struct {
	Throughput float64 `json:"throughput"`
	P50        float64 `json:"p50"`
	P99        float64 `json:"p99"`
	CPUPer10k  float64 `json:"cpu_per_10k"`
}

func ratio(m, c *Figures) *Ratio {
	if !m.ok() || !c.ok() {
		return nil
	}
	div := func(a, b float64) float64 {
		if b <= 0 {
			return 0
		}
		return round3(a / b)
	}
	return &Ratio{
		Throughput: div(m.Throughput, c.Throughput),
		P50:        div(m.Latency.P50, c.Latency.P50),
		P99:        div(m.Latency.P99, c.Latency.P99),
		CPUPer10k:  div(m.CPUPer10k, c.CPUPer10k),
	}
}

// Profile is a CPU profile and its heaviest functions.
type Profile struct {
	File string `json:"file"`
	// Top are the first lines of `go tool pprof -top`, when the go
	// command was found.
	Top []string `json:"top,omitempty"`
}

// Target is one performance target of the project, met or missed.
type Target struct {
	Topology string  `json:"topology"`
	Name     string  `json:"name"`
	Want     string  `json:"want"`
	Got      string  `json:"got"`
	Status   string  `json:"status"`
	Value    float64 `json:"value"`
	Limit    float64 `json:"limit"`
	// Note says, for a miss, which resource was saturated.
	Note string `json:"note,omitempty"`
}

// Target statuses.
const (
	TargetMet         = "met"
	TargetMissed      = "missed"
	TargetNotMeasured = "not measured"
)

func newResults(o Options) *Results {
	r := &Results{
		Date:      time.Now().UTC().Truncate(time.Second),
		GoVersion: runtime.Version(),
		Machine: Machine{Cores: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), OS: runtime.GOOS,
			Arch: runtime.GOARCH, LoadStart: loadAverage()},
		Settings: Settings{Events: o.events(), SteadyEvents: o.steadyEvents(), PayloadBytes: o.PayloadBytes,
			Rate: o.Rate, BatchSize: batchSize, Quick: o.Quick, CPUProfile: o.CPUProfile, BudgetS: o.Budget.Seconds(),
			Partitions: o.Partitions, EmbeddedSync: o.EmbeddedSync, BusDriver: o.BusDriver, Scenarios: o.Scenarios},
		Topologies: []*Topology{},
		Targets:    []Target{},
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		r.Modules = append(r.Modules, Module{Path: bi.Main.Path, Version: bi.Main.Version})
		for _, m := range bi.Deps {
			v := m.Version
			if m.Replace != nil {
				v += " => " + m.Replace.Path + " " + m.Replace.Version
			}
			r.Modules = append(r.Modules, Module{Path: m.Path, Version: v})
		}
		sort.Slice(r.Modules[1:], func(i, j int) bool { return r.Modules[i+1].Path < r.Modules[j+1].Path })
	}
	return r
}
