package bench

import (
	"strings"
	"testing"
)

// TestCPUAndCeilingTargets: the no-op and webhook runs are held to their
// CPU per 10k events, and the embedded no-op run's events/s to its
// same-run ceiling's, on either side of each bound.
func TestCPUAndCeilingTargets(t *testing.T) {
	run := func(thr, cpu float64) *Figures {
		return &Figures{Events: 10, Delivered: 10, Throughput: thr, CPUPer10k: cpu}
	}
	scenario := func(name string, m, c *Figures) *Scenario {
		return &Scenario{Name: name, Status: StatusMeasured, Figures: m, Ceiling: c, Ratio: ratio(m, c)}
	}
	ceiling := run(10_000, 0.5)
	res := &Results{Machine: Machine{Cores: 2}, Topologies: []*Topology{
		{Name: "embedded", Available: true, Scenarios: []*Scenario{scenario(ScenarioNoop, run(9_000, 0.63), ceiling)}},
		{Name: "nats", Available: true, Scenarios: []*Scenario{
			scenario(ScenarioNoop, run(25_000, 1.31), ceiling), scenario(ScenarioWebhook, run(12_000, 1.9), ceiling)}},
		{Name: "redis", Available: true, Scenarios: []*Scenario{scenario(ScenarioNoop, run(25_000, 1.2), ceiling)}},
	}}
	got := map[string]Target{}
	for _, tg := range evaluate(res) {
		got[tg.Topology+"/"+tg.Name] = tg
	}
	for _, c := range []struct {
		key, status string
		value       float64
	}{
		{"embedded/throughput, no-op action, over the ceiling's", TargetMet, 0.9},
		{"embedded/CPU per 10k events, no-op action", TargetMet, 0.63},
		{"nats/CPU per 10k events, no-op action", TargetMissed, 1.31},
		{"nats/CPU per 10k events, signed webhook", TargetMet, 1.9},
		{"redis/CPU per 10k events, no-op action", TargetMet, 1.2},
		{"postgres/CPU per 10k events, no-op action", "", 0},
	} {
		tg, ok := got[c.key]
		switch {
		case c.status == "" && ok:
			t.Errorf("%s: evaluated for a topology that did not run", c.key)
		case c.status == "":
		case !ok:
			t.Errorf("%s: no such target", c.key)
		case tg.Status != c.status || tg.Value != c.value:
			t.Errorf("%s: %s at %v (%s); want %s at %v", c.key, tg.Status, tg.Value, tg.Got, c.status, c.value)
		}
	}
	if _, ok := got["embedded/throughput, no-op action"]; ok {
		t.Error("embedded still has an events/s target of its own; want it against the ceiling only")
	}

	// Over either bound, the embedded run misses; a miss whose ceiling
	// is over the bound too says so.
	for _, c := range []struct {
		ceiling  *Figures
		overNote bool
	}{{ceiling, false}, {run(10_000, 0.75), true}} {
		res.Topologies = []*Topology{{Name: "embedded", Available: true,
			Scenarios: []*Scenario{scenario(ScenarioNoop, run(7_000, 0.71*c.ceiling.CPUPer10k/0.5), c.ceiling)}}}
		for _, tg := range evaluate(res) {
			if tg.Topology != "embedded" || tg.Name != "throughput, no-op action, over the ceiling's" && tg.Name != "CPU per 10k events, no-op action" {
				continue
			}
			if tg.Status != TargetMissed {
				t.Errorf("embedded %s: %s at %s; want missed", tg.Name, tg.Status, tg.Got)
			}
			if over := strings.Contains(tg.Note, "the ceiling alone is over the target"); tg.Name == "CPU per 10k events, no-op action" && over != c.overNote {
				t.Errorf("embedded CPU note %q with a ceiling of %v s; want the ceiling named over the target: %v", tg.Note, c.ceiling.CPUPer10k, c.overNote)
			}
		}
	}
}
