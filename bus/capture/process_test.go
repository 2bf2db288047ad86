package capture_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/bus/capture"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/internal/testenv"
)

// The test binary doubles as a capture process: with childEnv set it runs
// a subscriber and prints "<uuid> <entity id>" for every message it acks.
const (
	childEnv      = "MILLRACE_CAPTURE_TEST_CHILD"
	childURLEnv   = "MILLRACE_CAPTURE_TEST_URL"
	childDelayEnv = "MILLRACE_CAPTURE_TEST_DELAY"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild(os.Getenv(childEnv)))
	}
	os.Exit(m.Run())
}

func runChild(schema string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	pool, err := pgxpool.New(ctx, os.Getenv(childURLEnv))
	if err != nil {
		logger.Error("connect", "err", err)
		return 1
	}
	defer pool.Close()
	delay, _ := time.ParseDuration(os.Getenv(childDelayEnv))
	cfg := config(schema)
	cfg.MaxInFlight = 4
	sub := capture.NewSubscriber(pool, cfg, logger)
	ch, err := sub.Subscribe(ctx, "bridge")
	if err != nil {
		logger.Error("subscribe", "err", err)
		return 1
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	for m := range ch {
		ev, err := event.Decode(m.Payload)
		if err != nil {
			logger.Error("decode", "err", err)
			return 1
		}
		time.Sleep(delay)
		// Printed before the ack: a line means "handled", and a change
		// may be handled again after a kill, never skipped.
		mu.Lock()
		fmt.Fprintf(out, "%s %s\n", m.UUID, ev.EntityID)
		_ = out.Flush()
		mu.Unlock()
		m.Ack()
	}
	return 0
}

type line struct {
	child    int
	uuid, id string
}

// child starts a capture process; its lines arrive on lines.
type child struct {
	cmd *exec.Cmd
	n   int
}

func startChild(t *testing.T, schema string, n int, delay time.Duration, lines chan<- line) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		childEnv+"="+schema,
		childURLEnv+"="+testenv.PostgresSchemaURL(t, schema),
		childDelayEnv+"="+delay.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &prefixWriter{t: t, prefix: fmt.Sprintf("child %d: ", n)}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, n: n}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 2 {
				lines <- line{child: n, uuid: f[0], id: f[1]}
			}
		}
	}()
	t.Cleanup(func() { c.kill(); stderr.close() })
	return c
}

// kill sends SIGKILL: no drain, no final checkpoint.
func (c *child) kill() {
	if c.cmd.ProcessState != nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	_ = c.cmd.Wait()
}

// prefixWriter copies a child's logs to the test log while the test runs.
type prefixWriter struct {
	t      *testing.T
	prefix string
	mu     sync.Mutex
	done   bool
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(w.prefix + strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *prefixWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// changeIDs maps entity id → change id of every change in the log.
func changeIDs(t *testing.T, pool *pgxpool.Pool, schema string) map[string]string {
	t.Helper()
	rows, err := pool.Query(context.Background(), "SELECT entity_id, id::text FROM "+schema+".change_log")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var eid, id string
		if err := rows.Scan(&eid, &id); err != nil {
			t.Fatal(err)
		}
		out[eid] = id
	}
	return out
}

// SIGKILL a capture process mid-stream, start another: every change is
// handled, with the UUID it has in the change log.
func TestSIGKILLLosesNothing(t *testing.T) {
	t.Parallel()
	pool, schema := setup(t)
	const total = 2000
	run(t, pool, "INSERT INTO orders SELECT g, 'new' FROM generate_series(1, $1::int) g", total)
	want := changeIDs(t, pool, schema)

	lines := make(chan line, total*2)
	first := startChild(t, schema, 1, time.Millisecond, lines)
	seen := map[string]string{}
	count := 0
	record := func(l line) {
		count++
		if prev, ok := seen[l.id]; ok && prev != l.uuid {
			t.Errorf("entity %s handled as %s and as %s", l.id, prev, l.uuid)
		}
		seen[l.id] = l.uuid
	}
	timeout := time.After(wait)
	for count < total/3 {
		select {
		case l := <-lines:
			record(l)
		case <-timeout:
			t.Fatalf("first process handled %d changes within %s", count, wait)
		}
	}
	first.kill()
	// Lines already printed by the dead process.
	for drained := false; !drained; {
		select {
		case l := <-lines:
			record(l)
		default:
			drained = true
		}
	}
	if len(seen) >= total {
		t.Fatalf("the first process handled everything (%d) before the kill; the test proves nothing", len(seen))
	}
	killedAt := len(seen)

	startChild(t, schema, 2, 0, lines)
	timeout = time.After(wait)
	for len(seen) < total {
		select {
		case l := <-lines:
			record(l)
		case <-timeout:
			t.Fatalf("handled %d of %d changes", len(seen), total)
		}
	}
	for eid, id := range want {
		if seen[eid] != id {
			t.Errorf("entity %s: handled as %q, change id %s", eid, seen[eid], id)
		}
	}
	t.Logf("killed after %d changes; %d handled twice after the restart", killedAt, count-total)
}

// Two capture processes for one (source, group): only one reads; SIGKILL
// it and the other takes over within 10 s, nothing lost.
func TestFailoverWithinTenSeconds(t *testing.T) {
	t.Parallel()
	pool, schema := setup(t)
	lines := make(chan line, 10000)
	children := []*child{
		startChild(t, schema, 1, 0, lines),
		startChild(t, schema, 2, 0, lines),
	}

	ctx, stopWriting := context.WithCancel(context.Background())
	type result struct {
		n   int
		err error
	}
	written := make(chan result, 1)
	go func() {
		n := 0
		for ctx.Err() == nil {
			if _, err := pool.Exec(context.Background(), "INSERT INTO orders VALUES ($1, 'new')", n+1); err != nil {
				written <- result{n, err}
				return
			}
			n++
			time.Sleep(10 * time.Millisecond)
		}
		written <- result{n, nil}
	}()
	defer stopWriting()

	seen := map[string]string{}
	perChild := map[int]int{}
	record := func(l line) {
		seen[l.id] = l.uuid
		perChild[l.child]++
	}
	timeout := time.After(wait)
	for perChild[1]+perChild[2] < 100 {
		select {
		case l := <-lines:
			record(l)
		case <-timeout:
			t.Fatalf("handled %v within %s", perChild, wait)
		}
	}
	active := 1
	if perChild[2] > 0 {
		active = 2
	}
	if perChild[1] > 0 && perChild[2] > 0 {
		t.Fatalf("both processes read: %v", perChild)
	}
	children[active-1].kill()
	killed := time.Now()
	standby := 3 - active
	took := time.Duration(0)
	timeout = time.After(wait)
	for took == 0 {
		select {
		case l := <-lines:
			record(l)
			if l.child == standby {
				took = time.Since(killed)
			}
		case <-timeout:
			t.Fatalf("the standby did not take over within %s", wait)
		}
	}
	if took > 10*time.Second {
		t.Errorf("the standby took over after %s, want within 10s", took)
	}
	for perChild[standby] < 50 {
		select {
		case l := <-lines:
			record(l)
		case <-timeout:
			t.Fatalf("the new active process handled %d changes", perChild[standby])
		}
	}
	stopWriting()
	res := <-written
	if res.err != nil {
		t.Fatalf("insert %d: %v", res.n+1, res.err)
	}
	n := res.n
	timeout = time.After(wait)
	for len(seen) < n {
		select {
		case l := <-lines:
			record(l)
		case <-timeout:
			t.Fatalf("handled %d of %d changes", len(seen), n)
		}
	}
	for eid, id := range changeIDs(t, pool, schema) {
		if seen[eid] != id {
			t.Errorf("entity %s: handled as %q, change id %s", eid, seen[eid], id)
		}
	}
	t.Logf("process %d took over %s after the kill; %d changes, handled %v", standby, took.Round(time.Millisecond), n, perChild)
}
