package backfill_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/internal/e2e"
)

func TestMain(m *testing.M) { e2e.Main(m) }

const rows = 400

// TestBackfillBesideWriters fills a table before millrace starts, then
// backfills it on the nats topology, once with each capture (triggers,
// and the WAL where the backfill's pages travel as logical decoding
// messages in the same stream as the writers' changes), while writers
// update a random subset
// of rows again and again (n counts each row's versions). The observer of
// every event must see each row's events with n never going down (no
// backfilled image after a newer change), end at each row's latest
// version, and have seen every row; the READ observer sees READ events
// only. Then a backfill for that observer alone is killed with SIGKILL
// part-way and run again: it resumes from its cursor, and every row
// reaches that observer and no other.
func TestBackfillBesideWriters(t *testing.T) {
	for _, run := range []string{"nats", "nats" + e2e.WALRun} {
		t.Run(run, func(t *testing.T) {
			t.Parallel()
			backfillBesideWriters(t, run)
		})
	}
}

func backfillBesideWriters(t *testing.T, run string) {
	recv := e2e.NewReceiver(t)
	r := e2e.NewRig(t, run, e2e.Options{
		Receiver: recv,
		Observers: map[string]e2e.Observer{
			"every": {Event: "*", Actions: []map[string]any{recv.Action("every", nil)}},
			"reads": {Event: "READ", Actions: []map[string]any{recv.Action("reads", nil)}},
		},
	})
	ctx := context.Background()
	src := r.Sources[0]
	if _, err := src.Pool.Exec(ctx, fmt.Sprintf("INSERT INTO orders SELECT x, 'old', 0 FROM generate_series(1, %d) x", rows)); err != nil {
		t.Fatal(err)
	}
	r.Start()

	// Writers: 5 random rows per transaction, n = n + 1, until the
	// backfill is done.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			ids := make([]int, 5)
			for i := range ids {
				ids[i] = 1 + rng.IntN(rows)
			}
			if err := r.Update(ctx, ids, "updated"); err != nil {
				t.Errorf("update: %v", err)
				return
			}
		}
	}()
	out, errOut, err := backfillCmd(t, r, "--table", src.Schema+".orders", "--page", "20", "--rate", "400/s")
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("backfill: %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	t.Logf("backfill: %s", out)

	final := map[string]int64{}
	res, err := src.Pool.Query(ctx, "SELECT id::text, n FROM orders")
	if err != nil {
		t.Fatal(err)
	}
	for res.Next() {
		var id string
		var n int64
		if err := res.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		final[id] = n
	}
	res.Close()
	updated := 0
	for _, n := range final {
		if n > 0 {
			updated++
		}
	}
	if updated == 0 {
		t.Fatal("no row was updated during the backfill: the test did not test anything")
	}

	latest := func() bool {
		last := map[string]int64{}
		for _, d := range recv.Delivered("every") {
			last[d.Event.EntityID] = version(t, d.Event)
		}
		for id, n := range final {
			if v, ok := last[id]; !ok || v != n {
				return false
			}
		}
		return true
	}
	recv.Wait(t, 60*time.Second, "every row's latest version reaches the observer of every event", latest)
	recv.Wait(t, 30*time.Second, "every row reaches the READ observer", func() bool { return len(perRow(recv.Delivered("reads"))) == rows })
	// The observer of every event runs apart from the READ observer, and
	// a row whose last update committed before its page had its latest
	// version before its READ: the last pages' READs may still be on
	// their way to it. Wait for them; a row still without one is
	// reported below with its trace.
	readsAtEvery := func() int {
		read := map[string]bool{}
		for _, d := range recv.Delivered("every") {
			if d.Event.Type == event.Read {
				read[d.Event.EntityID] = true
			}
		}
		return len(read)
	}
	if n := readsAtEvery(); n < rows {
		start := time.Now()
		for deadline := start.Add(30 * time.Second); readsAtEvery() < rows && time.Now().Before(deadline); {
			time.Sleep(25 * time.Millisecond)
		}
		t.Logf("%d rows' READs had not reached the observer of every event when the READ observer had them all; waited %s for them",
			rows-n, time.Since(start).Round(time.Millisecond))
	}

	// Per row, in arrival order: versions never go down.
	last := map[string]int64{}
	readSeen := map[string]bool{}
	for _, d := range recv.Delivered("every") {
		ev := d.Event
		v := version(t, ev)
		if prev, ok := last[ev.EntityID]; ok && v < prev {
			t.Errorf("row %s: %s event %s carries version %d after version %d", ev.EntityID, ev.Type, ev.ID, v, prev)
		}
		last[ev.EntityID] = v
		if ev.Type == event.Read {
			readSeen[ev.EntityID] = true
		}
	}
	for id := range final {
		if !readSeen[id] {
			t.Errorf("row %s: no READ event reached the observer of every event; %s", id, rowTrace(t, r, recv, id))
		}
	}
	for _, d := range recv.Delivered("reads") {
		if d.Event.Type != event.Read {
			t.Fatalf("the READ observer got a %s event", d.Event.Type)
		}
	}
	t.Logf("%d rows, %d updated during the backfill; %d deliveries to the observer of every event", rows, updated, len(recv.Delivered("every")))

	// --observer reads, killed part-way, then resumed.
	every, reads := len(recv.Delivered("every")), len(recv.Delivered("reads"))
	args := []string{"--table", src.Schema + ".orders", "--observer", "reads", "--page", "10", "--rate", "200/s"}
	cmd := exec.Command(e2e.Binary(t), append([]string{"backfill", "-c", r.Config}, args...)...)
	cmd.Env = r.Env
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var done int64
	deadline := time.Now().Add(30 * time.Second)
	for done < 100 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		_ = src.Pool.QueryRow(ctx, "SELECT coalesce(max(rows), 0) FROM "+src.Schema+".backfills WHERE observer = 'reads'").Scan(&done)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	if done < 100 || done >= rows {
		t.Fatalf("the killed backfill had emitted %d rows; want it killed part-way", done)
	}
	out, errOut, err = backfillCmd(t, r, args...)
	if err != nil {
		t.Fatalf("resumed backfill: %v\nstdout: %s\nstderr: %s", err, out, errOut)
	}
	if !strings.Contains(out, "rows emitted as READ events in ") || !strings.Contains(out, fmt.Sprintf("(%d in all, resumed after ", rows)) {
		t.Fatalf("resumed backfill printed %q; want it resumed, %d rows in all", out, rows)
	}
	recv.Wait(t, 60*time.Second, "every row reaches the READ observer again", func() bool {
		return len(perRow(recv.Delivered("reads")[reads:])) == rows
	})
	time.Sleep(time.Second) // time for any stray delivery to the other observer
	if n := len(recv.Delivered("every")); n != every {
		t.Errorf("the observer of every event got %d deliveries from a backfill for observer reads", n-every)
	}
	if n := len(recv.Delivered("reads")) - reads; n != rows {
		t.Errorf("observer reads got %d events from the killed and resumed backfill, want %d (each row once: a page commits with its cursor)", n, rows)
	}
}

// backfillCmd runs millrace backfill against the rig's config.
func backfillCmd(t *testing.T, r *e2e.Rig, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(e2e.Binary(t), append([]string{"backfill", "-c", r.Config}, args...)...)
	cmd.Env = r.Env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// version is the row's n in an event's data.
func version(t *testing.T, ev *event.Event) int64 {
	t.Helper()
	switch n := ev.Data["n"].(type) {
	case int64:
		return n
	case float64:
		return int64(n)
	case string:
		v, err := strconv.ParseInt(n, 10, 64)
		if err == nil {
			return v
		}
	}
	t.Fatalf("event %s (%s of row %s) has no version n: %v", ev.ID, ev.Type, ev.EntityID, ev.Data)
	return 0
}

// rowTrace describes what the receiver and the dead-letter store hold of
// one row, for a failure message: every request of both observers for
// it, and the dead letters.
func rowTrace(t *testing.T, r *e2e.Rig, recv *e2e.Receiver, id string) string {
	var b strings.Builder
	for _, path := range []string{"every", "reads"} {
		fmt.Fprintf(&b, "\n\t/%s:", path)
		for _, d := range recv.Requests(path) {
			if d.Event != nil && d.Event.EntityID == id {
				fmt.Fprintf(&b, "\n\t\t%s %s n=%v seq=%d status=%d attempt=%d at %s",
					d.Event.Type, d.Event.ID, d.Event.Data["n"], d.Event.Seq, d.Status, d.Attempt, d.At.Format("15:04:05.000"))
			}
		}
	}
	for rid, n := range perRow(recv.Delivered("reads")) {
		if n > 1 {
			fmt.Fprintf(&b, "\n\trow %s reached /reads %d times", rid, n)
		}
	}
	fmt.Fprintf(&b, "\n\treceiver: %s", recv.Summary())
	for _, dl := range r.DeadLetters(t) {
		fmt.Fprintf(&b, "\n\tdead letter %s observer=%q reason=%s error=%q", dl.ID, dl.Observer, dl.Reason, dl.Error)
	}
	return b.String()
}

// perRow counts deliveries by entity id.
func perRow(ds []*e2e.Delivery) map[string]int {
	n := map[string]int{}
	for _, d := range ds {
		n[d.Event.EntityID]++
	}
	return n
}
