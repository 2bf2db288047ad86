package router

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/millrace/millrace/middleware"
	"github.com/millrace/millrace/router/console"
	"github.com/millrace/millrace/stores"
)

// mountConsole serves the admin console (http.console) under
// /console/, behind the admin token. It reads what /metrics and the
// admin API read: the router's Prometheus registry and the dead-letter
// store, plus the recent deliveries ring that only the console keeps.
func (r *Router) mountConsole(mux *http.ServeMux, token string) {
	want := hashSecret(token)
	c, err := console.New(console.Options{Source: consoleSource{r},
		CheckToken: func(s string) bool { return token != "" && want.matches(s) },
		Logger:     r.logger.With("component", "console")})
	if err != nil {
		// The templates are embedded and parsed in the tests: this is a
		// build defect, not a config error.
		panic(err)
	}
	c.Mount(mux)
}

// consoleSource is the router as the console sees it.
type consoleSource struct{ r *Router }

var _ console.Source = consoleSource{}

func (s consoleSource) Topology() string        { return s.r.cfg.Topology }
func (s consoleSource) ObserverNames() []string { return s.r.cfg.ObserverNames() }

func (s consoleSource) DeadLetters() (stores.DeadLetters, error) {
	b, why := s.r.builtBackend()
	switch {
	case b == nil:
		return nil, errors.New("starting: " + why)
	case b.DeadLetters == nil:
		return nil, fmt.Errorf("topology %s has no dead-letter store", s.r.cfg.Topology)
	}
	return b.DeadLetters, nil
}

func (s consoleSource) DeadLettersVolatile() bool {
	return !s.r.opts.Topologies.Features(s.r.cfg.Topology).DurableDeadLetters
}

func (s consoleSource) Replay(ctx context.Context, ids []string) ([]string, map[string]string, error) {
	store, err := s.DeadLetters()
	if err != nil {
		return nil, nil, err
	}
	res, err := s.r.replay(ctx, store, ReplayRequest{IDs: ids})
	failed := make(map[string]string, len(res.Failed))
	for _, f := range res.Failed {
		failed[f.ID] = f.Error
	}
	return res.IDs, failed, err
}

func (s consoleSource) Recent() map[string][]console.Delivery {
	if s.r.recent == nil {
		return nil
	}
	return s.r.recent.snapshot()
}

func (s consoleSource) ConfigTOML() ([]byte, error) { return s.r.cfg.TOML() }

// families gathers the router's registry by metric name.
func (s consoleSource) families() map[string]*dto.MetricFamily {
	mfs, err := s.r.metrics.Registry.Gather()
	if err != nil {
		// Gather returns what it could alongside the error.
		s.r.logger.Warn("console: gathering metrics", "err", err)
	}
	out := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// Observers reads millrace_observer_runs_total, millrace_action_runs_total
// and millrace_action_duration_seconds.
func (s consoleSource) Observers() []console.Observer {
	fams := s.families()
	byName := map[string]*console.Observer{}
	var order []string
	get := func(name string) *console.Observer {
		o, ok := byName[name]
		if !ok {
			o = &console.Observer{Name: name}
			byName[name] = o
			order = append(order, name)
		}
		return o
	}
	for _, name := range s.r.cfg.ObserverNames() {
		get(name)
	}
	if mf := fams["millrace_observer_runs_total"]; mf != nil {
		for _, m := range mf.GetMetric() {
			o, n := get(label(m, "observer")), uint64(m.GetCounter().GetValue())
			o.Matched += n
			switch label(m, "result") {
			case middleware.OutcomeSucceeded:
				o.Succeeded += n
			case middleware.OutcomeSkipped:
				o.SkippedCondition += n
			case middleware.OutcomeDuplicate:
				o.Duplicate += n
			case middleware.OutcomeDeadLettered:
				o.DeadLettered += n
			case middleware.OutcomeLogged:
				o.Logged += n
			case middleware.OutcomeDropped:
				o.Dropped += n
			default:
				o.Redelivered += n
			}
		}
	}
	type key struct{ observer, action string }
	actions := map[key]*console.Action{}
	act := func(m *dto.Metric) *console.Action {
		k := key{label(m, "observer"), label(m, "action")}
		a, ok := actions[k]
		if !ok {
			a = &console.Action{Name: k.action}
			actions[k] = a
		}
		return a
	}
	if mf := fams["millrace_action_runs_total"]; mf != nil {
		for _, m := range mf.GetMetric() {
			a, n := act(m), uint64(m.GetCounter().GetValue())
			switch label(m, "result") {
			case "succeeded":
				a.Runs += n
			case "failed":
				a.Runs += n
				a.Failures += n
			case "breaker_open":
				a.BreakerOpen += n
			}
		}
	}
	if mf := fams["millrace_action_duration_seconds"]; mf != nil {
		for _, m := range mf.GetMetric() {
			if q := quantile(0.99, m.GetHistogram()); !math.IsNaN(q) {
				act(m).P99 = time.Duration(q * float64(time.Second))
			}
		}
	}
	keys := make([]key, 0, len(actions))
	for k := range actions {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].action < keys[j].action })
	for _, k := range keys {
		o := get(k.observer)
		o.Actions = append(o.Actions, *actions[k])
	}
	out := make([]console.Observer, 0, len(order))
	sort.Strings(order)
	for _, name := range order {
		out = append(out, *byName[name])
	}
	return out
}

// quantile estimates the q-quantile of a histogram as Prometheus's
// histogram_quantile does: linear inside the bucket that holds it, the
// upper bound of the last finite bucket past it. NaN without samples.
func quantile(q float64, h *dto.Histogram) float64 {
	total := float64(h.GetSampleCount())
	if total == 0 {
		return math.NaN()
	}
	rank := q * total
	lower, below := 0.0, 0.0
	for _, b := range h.GetBucket() {
		upper, count := b.GetUpperBound(), float64(b.GetCumulativeCount())
		if count >= rank {
			if count == below {
				return upper
			}
			return lower + (upper-lower)*(rank-below)/(count-below)
		}
		lower, below = upper, count
	}
	return lower
}

var breakerStates = map[float64]string{0: "closed", 1: "half-open", 2: "open"}

// Breakers reads millrace_breaker_state.
func (s consoleSource) Breakers() []console.Breaker {
	mf := s.families()["millrace_breaker_state"]
	var out []console.Breaker
	for _, m := range mf.GetMetric() {
		out = append(out, console.Breaker{Endpoint: label(m, "breaker"), State: breakerStates[m.GetGauge().GetValue()]})
	}
	return out
}

// busSeries are the prefixes of the metrics the bus page shows: the
// buses' and captures' own, and the handlers' message counts.
var busSeries = []string{"millrace_bus_", "millrace_capture_", "subscriber_messages_received_total", "millrace_events_total", "millrace_dlq_size"}

// notShown says, per topology, what the bus page cannot show.
var notShown = map[string][]string{
	"embedded": {"Capture position vs head: HTTP ingest publishes straight to the bus; there is no capture to be behind."},
	"nats": {"Capture position vs head for trigger capture: the change log's read position is not exported; " +
		"WAL capture shows the slot's retained WAL (millrace_capture_wal_retained_bytes) below."},
	"multidb": {"Capture position vs head for trigger capture: not exported per source; " +
		"WAL capture shows each slot's retained WAL (millrace_capture_wal_retained_bytes) below."},
	"redis": {"Capture position vs head for trigger capture: not exported; " +
		"WAL capture shows the slot's retained WAL (millrace_capture_wal_retained_bytes) below.",
		"Lag per group needs Redis 7 or later (XINFO GROUPS lag); older servers show -1."},
	"postgres": {"Lag per consumer group: the change log's consumer-group offsets (watermill-sql) are not exported.",
		"Capture position vs head: the change log is the bus, so there is no separate capture position."},
}

// Bus reports readiness and the bus's series.
func (s consoleSource) Bus(ctx context.Context) console.BusHealth {
	h := console.BusHealth{Topology: s.r.cfg.Topology, Unavailable: notShown[s.r.cfg.Topology]}
	b, why := s.r.builtBackend()
	switch {
	case b == nil:
		h.Ready = errors.New("starting: " + why)
	case b.Ready != nil:
		h.Ready = b.Ready(ctx)
	}
	if b != nil && b.Lag != nil {
		lags, err := b.Lag(ctx)
		if err != nil {
			h.LagError = err.Error()
		}
		for _, l := range lags {
			cl := console.Lag{Consumer: l.Consumer, Pending: l.Pending, AckPending: l.AckPending,
				Position: l.PositionID, Head: l.HeadID}
			if cl.Position == "" && cl.Head == "" {
				cl.Position, cl.Head = strconv.FormatUint(l.Position, 10), strconv.FormatUint(l.Head, 10)
			}
			h.Lags = append(h.Lags, cl)
		}
	} else if b != nil {
		h.LagError = "topology " + s.r.cfg.Topology + " does not report its consumers' lag"
	}
	fams := s.families()
	names := make([]string, 0, len(fams))
	for n := range fams {
		for _, p := range busSeries {
			if strings.HasPrefix(n, p) {
				names = append(names, n)
				break
			}
		}
	}
	sort.Strings(names)
	for _, n := range names {
		mf := fams[n]
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue()
			h.Metrics = append(h.Metrics, console.Metric{Name: n, Labels: strings.Join(labels, ","), Value: v, Help: mf.GetHelp()})
		}
	}
	return h
}
