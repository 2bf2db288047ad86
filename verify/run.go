package verify

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/millrace/millrace/config"
)

// The scenarios, in the order they run.
const (
	Baseline         = "baseline"
	KillWorker       = "kill-worker"
	EndpointOutage   = "endpoint-outage"
	CaptureKilled    = "capture-killed"
	DedupUnreachable = "dedup-unreachable"
)

// Scenarios lists every scenario in its order.
var Scenarios = []string{Baseline, KillWorker, EndpointOutage, CaptureKilled, DedupUnreachable}

// Options shape a run.
type Options struct {
	// Binary is the millrace executable the workers run.
	Binary string
	// Changes per scenario, over Entities entities (Changes/Entities
	// changes each).
	Changes, Entities int
	// Outage is how long the endpoint answers 503, and how long the
	// dedup store is cut off.
	Outage time.Duration
	// Writes is how long a scenario's changes take to write.
	Writes time.Duration
	// Scenarios to run, in Scenarios' order; empty: all.
	Scenarios []string
	// CatchUp bounds the wait for a scenario's last delivery.
	CatchUp time.Duration
	// Log gets progress lines.
	Log io.Writer
}

// Short is the short form (make test): 1,000 changes on 10 entities
// over 2 s, a 3 s outage. An entity's changes are 20 ms apart: close
// enough that workers which do not keep an entity's order (two workers
// without partitions, say) show reordered deliveries.
func Short() Options {
	return Options{Changes: 1000, Entities: 10, Outage: 3 * time.Second, Writes: 2 * time.Second, CatchUp: 90 * time.Second}
}

// Full is the full form's defaults: 10,000 changes on 50 entities over
// 15 s (75 ms apart per entity), a 10 s outage.
func Full() Options {
	return Options{Changes: 10000, Entities: 50, Outage: 10 * time.Second, Writes: 15 * time.Second, CatchUp: 5 * time.Minute}
}

// Row is one scenario's line of the report.
type Row struct {
	Scenario string
	// Skipped, when set, says why the scenario did not run ("n/a").
	Skipped string
	Result
	// CatchUp is from the fault healed (and the last change written) to
	// the last change's first delivery.
	CatchUp time.Duration
	// Err is a failure of the scenario itself (a worker that would not
	// start, the catch-up timeout).
	Err error
	// Fault says what the fault did, as seen from outside the workers
	// (requests refused, connections terminated, store errors), so that
	// a clean result is not a fault that never hit.
	Fault string
	// Tolerated, when set, is why the row's duplicate effects do not
	// fail the run. Two faults allow them by design: a SIGKILL can land
	// after an effect and before its record in the dedup ledger (or take
	// a ledger held in memory with it), and an unreachable ledger fails
	// open; what the bus redelivers then runs again, under the same
	// idempotency key (else the row fails: Rekeyed).
	Tolerated string
}

// Failed reports whether the row fails the run.
func (r Row) Failed() bool {
	return r.Skipped == "" && (r.Err != nil || !r.Result.OK() || r.Duplicates > 0 && r.Tolerated == "")
}

// Report is a run's outcome.
type Report struct {
	Topology string
	// Scratch is the name of the schema, stream, key prefix and group
	// the run created and removed.
	Scratch  string
	Workers  int
	Capture  string
	Opts     Options
	Rows     []Row
	Took     time.Duration
	Rejected []string
	// Cleanup is the error of removing the scratch, if any.
	Cleanup error
}

// Failed reports whether any scenario lost, duplicated or reordered a
// change, or failed to run.
func (r *Report) Failed() bool {
	for _, row := range r.Rows {
		if row.Failed() {
			return true
		}
	}
	return len(r.Rejected) > 0 || r.Cleanup != nil
}

// Run runs the scenarios against the services of the config at path
// (cfg is its loaded, valid form). A *ConfigError is the user's config's
// problem; any other error means the run could not be made.
func Run(ctx context.Context, path string, cfg *config.Config, opts Options) (rep *Report, err error) {
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.Entities < 1 || opts.Changes < opts.Entities {
		return nil, configErr("--changes", "must be at least --entities (%d), got %d", opts.Entities, opts.Changes)
	}
	selected, err := selectScenarios(opts.Scenarios)
	if err != nil {
		return nil, err
	}
	recv, err := newReceiver()
	if err != nil {
		return nil, err
	}
	defer recv.Close()
	s, err := newScratch(ctx, path, cfg, recv.URL, recv.Secret(), opts)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	rep = &Report{Topology: cfg.Topology, Scratch: s.Name, Workers: s.Workers, Opts: opts, Capture: "trigger"}
	switch {
	case s.Ingest:
		rep.Capture = "HTTP ingest (no [[sources]])"
	case s.Sources[0].WAL:
		rep.Capture = "wal"
	}
	fmt.Fprintf(opts.Log, "verify: topology %s, scratch %s, %d worker(s), config %s\n", cfg.Topology, s.Name, s.Workers, s.Config)

	r := &run{s: s, recv: recv, opts: opts, log: opts.Log, http: &http.Client{Timeout: 15 * time.Second}}
	defer func() {
		for _, w := range r.workers {
			w.Stop(30 * time.Second)
		}
		rep.Cleanup = s.Remove(ctx)
		rep.Took = time.Since(start)
	}()
	for i := range s.Workers {
		env := append(append([]string(nil), s.Env...), fmt.Sprintf("MILLRACE_REDIS__CONSUMER=worker%d", i))
		r.workers = append(r.workers, &worker{name: fmt.Sprintf("worker%d", i), bin: opts.Binary, config: s.Config, dir: s.Dir, env: env})
	}
	// One after the other: the first creates the stores' tables and the
	// capture schema, which two processes starting at once on a fresh
	// database can race to create (a unique violation on pg_type).
	for _, w := range r.workers {
		if err := w.Start(); err != nil {
			return rep, err
		}
		if err := w.Ready(ctx, 2*time.Minute); err != nil {
			return rep, err
		}
	}

	perEntity := int64(opts.Changes / opts.Entities)
	var made [][]Change
	for i, name := range selected {
		row := Row{Scenario: name}
		entities := make([]int, opts.Entities)
		for j := range entities {
			entities[j] = i*opts.Entities + j + 1
		}
		if why := r.skip(name); why != "" {
			row.Skipped = why
			fmt.Fprintf(opts.Log, "verify: %s: n/a: %s\n", name, why)
			rep.Rows = append(rep.Rows, row)
			made = append(made, nil)
			continue
		}
		fmt.Fprintf(opts.Log, "verify: %s: %d changes on %d entities\n", name, int(perEntity)*len(entities), len(entities))
		cs, catchUp, fault, err := r.scenario(ctx, name, entities, perEntity)
		row.CatchUp, row.Err, row.Fault = catchUp, err, fault
		made = append(made, cs)
		rep.Rows = append(rep.Rows, row)
		if ctx.Err() != nil {
			break
		}
	}
	// Late duplicates count too: tally once every scenario ran.
	time.Sleep(time.Second)
	got := recv.Deliveries()
	for i := range rep.Rows {
		row := &rep.Rows[i]
		if row.Skipped != "" {
			continue
		}
		row.Result = Tally(made[i], got)
		if row.Duplicates > 0 {
			row.Tolerated = tolerated(row.Scenario, cfg, s)
		}
	}
	if ctx.Err() != nil && len(rep.Rows) > 0 {
		// Its changes had no time to arrive: not a loss.
		last := &rep.Rows[len(rep.Rows)-1]
		*last = Row{Scenario: last.Scenario, Skipped: "interrupted"}
	}
	rep.Rejected = recv.Rejected()
	if rep.Failed() {
		for _, w := range r.workers {
			fmt.Fprintln(opts.Log, w.Tail(20))
		}
	}
	return rep, ctx.Err()
}

// tolerated says why duplicate effects of scenario do not fail the run,
// or "" when they do.
func tolerated(scenario string, cfg *config.Config, s *scratch) string {
	const sameKey = "; each came again under its first idempotency key"
	switch {
	case scenario == DedupUnreachable:
		return "the dedup store fails open while unreachable, so events redelivered during the cut ran again" + sameKey
	case scenario != KillWorker:
		return ""
	case !cfg.Dedup.Enabled:
		return "dedup is off (dedup.enabled = false)" + sameKey
	case s.Dedup == "memory":
		return "the dedup ledger was in the killed worker's memory; dedup.store = \"redis\" or \"postgres\" keeps it across a crash" + sameKey
	}
	return "the worker was killed after these effects and before their record in the dedup ledger" + sameKey
}

func selectScenarios(names []string) ([]string, error) {
	if len(names) == 0 {
		return Scenarios, nil
	}
	want := map[string]bool{}
	for _, n := range names {
		ok := false
		for _, s := range Scenarios {
			ok = ok || s == n
		}
		if !ok {
			return nil, configErr("--scenarios", "%q is not one of %s", n, strings.Join(Scenarios, ", "))
		}
		want[n] = true
	}
	var out []string
	for _, s := range Scenarios {
		if want[s] {
			out = append(out, s)
		}
	}
	return out, nil
}

type run struct {
	s       *scratch
	recv    *receiver
	opts    Options
	log     io.Writer
	http    *http.Client
	workers []*worker
	// sums holds each entity's last checksum.
	mu   sync.Mutex
	sums map[int]int64
}

// skip says why scenario cannot run on this setup, or "".
func (r *run) skip(name string) string {
	switch name {
	case CaptureKilled:
		if r.s.Ingest {
			return "no [[sources]]: changes come through HTTP ingest, there is no capture connection"
		}
	case DedupUnreachable:
		return r.s.NoDedupCut
	}
	return ""
}

// scenario writes perEntity changes to each of entities at a steady pace
// over opts.Writes while it injects the fault, then waits until every
// change was delivered. It returns the changes made and the catch-up.
func (r *run) scenario(ctx context.Context, name string, entities []int, perEntity int64) ([]Change, time.Duration, string, error) {
	third := perEntity / 3
	faultAt, abort := make(chan struct{}), make(chan struct{})
	var healed time.Time
	var fault string
	faultDone := make(chan error, 1)
	go func() {
		select {
		case <-faultAt:
		case <-abort: // the writes failed before the fault was due
			faultDone <- nil
			return
		case <-ctx.Done():
			faultDone <- ctx.Err()
			return
		}
		var err error
		healed, fault, err = r.fault(ctx, name)
		faultDone <- err
	}()
	var made []Change
	pause := r.opts.Writes / time.Duration(perEntity)
	var werr error
	started := false
	for seq := int64(1); seq <= perEntity && werr == nil; seq++ {
		if seq == third+1 {
			close(faultAt)
			started = true
		}
		var cs []Change
		cs, werr = r.write(ctx, entities, seq)
		made = append(made, cs...)
		select {
		case <-ctx.Done():
			werr = ctx.Err()
		case <-time.After(pause):
		}
	}
	if !started {
		close(abort)
	}
	ferr := <-faultDone
	if err := errors.Join(werr, ferr); err != nil {
		return made, 0, fault, err
	}
	from := healed
	if last := made[len(made)-1].At; last.After(from) {
		from = last
	}
	deadline := time.Now().Add(r.opts.CatchUp)
	for {
		res := Tally(made, r.recv.Deliveries())
		if res.Delivered == len(made) {
			return made, max(res.Last.Sub(from), 0), fault, nil
		}
		if time.Now().After(deadline) {
			return made, 0, fault, fmt.Errorf("%d of %d changes delivered within %s of the last write", res.Delivered, len(made), r.opts.CatchUp)
		}
		select {
		case <-ctx.Done():
			return made, 0, fault, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// fault injects the scenario's fault and returns when it was healed,
// and what it did.
func (r *run) fault(ctx context.Context, name string) (time.Time, string, error) {
	switch name {
	case KillWorker:
		w := r.workers[0]
		w.Kill()
		fmt.Fprintf(r.log, "verify: %s: killed %s with SIGKILL\n", name, w.name)
		time.Sleep(2 * time.Second)
		if err := w.Start(); err != nil {
			return time.Time{}, "", err
		}
		healed := time.Now()
		return healed, w.name + " killed, restarted 2 s later", w.Ready(ctx, 2*time.Minute)
	case EndpointOutage:
		before := r.recv.Refused()
		r.recv.down.Store(true)
		time.Sleep(r.opts.Outage)
		r.recv.down.Store(false)
		return time.Now(), fmt.Sprintf("%d requests answered 503", r.recv.Refused()-before), nil
	case CaptureKilled:
		n, err := r.terminateCapture(ctx)
		fmt.Fprintf(r.log, "verify: %s: terminated %d capture connection(s)\n", name, n)
		return time.Now(), fmt.Sprintf("%d capture connection(s) terminated", n), err
	case DedupUnreachable:
		before := r.metric("millrace_dedup_errors_total")
		r.s.DedupProxy.Close()
		time.Sleep(r.opts.Outage)
		err := r.s.DedupProxy.Listen(r.s.DedupProxy.Addr())
		note := fmt.Sprintf("%s store cut off; %.0f dedup errors", r.s.Dedup, r.metric("millrace_dedup_errors_total")-before)
		if r.s.Topology == "redis" {
			note += " (the Redis bus was cut off too)"
		}
		return time.Now(), note, err
	}
	return time.Now(), "", nil
}

// metric sums the metric name over the workers that answer.
func (r *run) metric(name string) float64 {
	sum := 0.0
	for _, w := range r.workers {
		addr := w.Addr()
		if addr == "" {
			continue
		}
		resp, err := r.http.Get("http://" + addr + "/metrics")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			rest, ok := strings.CutPrefix(line, name)
			if !ok || rest == "" || rest[0] != ' ' && rest[0] != '{' {
				continue
			}
			f := strings.Fields(line)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				sum += v
			}
		}
		_ = resp.Body.Close()
	}
	return sum
}

// terminateCapture terminates the capture connection of every scratch
// source, found by its application_name, waiting for it to exist.
func (r *run) terminateCapture(ctx context.Context) (int, error) {
	total := 0
	for _, src := range r.s.Sources {
		deadline := time.Now().Add(30 * time.Second)
		for {
			var n int
			err := src.Pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE application_name LIKE ANY($1) AND pid <> pg_backend_pid()`, src.AppName).Scan(&n)
			if err != nil {
				return total, fmt.Errorf("pg_terminate_backend: %w", err)
			}
			if n > 0 {
				total += n
				break
			}
			if time.Now().After(deadline) {
				return total, fmt.Errorf("source %s: no capture connection (application_name %v) within 30s", src.Name, src.AppName)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return total, nil
}

// Checksum is the rolling checksum of an entity's seq-th change, from
// the previous one's: a delivered event whose sum differs carries data
// that was not written. It stays below 2^53, exact in JSON numbers.
func Checksum(prev int64, entity int, seq int64) int64 {
	h := fnv.New64a()
	var b [24]byte
	for i, v := range []int64{prev, int64(entity), seq} {
		for j := range 8 {
			b[i*8+j] = byte(v >> (8 * j))
		}
	}
	_, _ = h.Write(b[:])
	return int64(h.Sum64() & (1<<53 - 1))
}

// write makes the seq-th change of each entity: an INSERT for seq 1, an
// UPDATE after; through SQL on the sources, or ingest without them.
func (r *run) write(ctx context.Context, entities []int, seq int64) ([]Change, error) {
	r.mu.Lock()
	if r.sums == nil {
		r.sums = map[int]int64{}
	}
	cs := make([]Change, len(entities))
	for i, e := range entities {
		r.sums[e] = Checksum(r.sums[e], e, seq)
		cs[i] = Change{Entity: e, Seq: seq, Sum: r.sums[e]}
	}
	r.mu.Unlock()
	var err error
	if r.s.Ingest {
		err = r.ingest(ctx, cs)
	} else {
		err = r.sql(ctx, cs)
	}
	now := time.Now()
	for i := range cs {
		cs[i].At = now
	}
	return cs, err
}

func (r *run) sql(ctx context.Context, cs []Change) error {
	n := len(r.s.Sources)
	for i, src := range r.s.Sources {
		var ids []int
		var sums []int64
		for _, c := range cs {
			if c.Entity%n == i {
				ids, sums = append(ids, c.Entity), append(sums, c.Sum)
			}
		}
		if len(ids) == 0 {
			continue
		}
		q := `UPDATE ` + src.Table + ` t SET seq = t.seq + 1, sum = u.sum FROM unnest($1::int[], $2::bigint[]) AS u(id, sum) WHERE t.id = u.id`
		if cs[0].Seq == 1 {
			q = `INSERT INTO ` + src.Table + ` (id, seq, sum) SELECT id, 1, sum FROM unnest($1::int[], $2::bigint[]) AS u(id, sum)`
		}
		if _, err := src.Pool.Exec(ctx, q, ids, sums); err != nil {
			return fmt.Errorf("source %s: write: %w", src.Name, err)
		}
	}
	return nil
}

// ingest posts the changes to a worker's /v1/events until one accepts
// them: through a killed worker's restart, the same event ids are sent
// again.
func (r *run) ingest(ctx context.Context, cs []Change) error {
	type ev struct {
		ID     string         `json:"id"`
		Type   string         `json:"event_type"`
		Entity string         `json:"entity_type"`
		EID    string         `json:"entity_id"`
		Data   map[string]any `json:"data"`
	}
	evs := make([]ev, len(cs))
	for i, c := range cs {
		typ := "UPDATE"
		if c.Seq == 1 {
			typ = "INSERT"
		}
		id := uuid.NewSHA1(uuid.NameSpaceURL, []byte(fmt.Sprintf("%s/%d/%d", r.s.Name, c.Entity, c.Seq)))
		evs[i] = ev{ID: id.String(), Type: typ, Entity: EntityType, EID: strconv.Itoa(c.Entity),
			Data: map[string]any{"id": c.Entity, "seq": c.Seq, "sum": c.Sum}}
	}
	body, err := json.Marshal(evs)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		w := r.workers[attempt%len(r.workers)]
		var status int
		var answer []byte
		if addr := w.Addr(); addr != "" {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/events", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			if resp, err := r.http.Do(req); err == nil {
				answer, _ = io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				status = resp.StatusCode
			}
		}
		switch {
		case status == http.StatusAccepted:
			return nil
		case status != 0 && status < 500:
			return fmt.Errorf("ingest: %d %s", status, answer)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
