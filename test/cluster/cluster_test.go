package cluster_test

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/internal/e2e"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/stores"
)

func TestMain(m *testing.M) { e2e.Main(m) }

const (
	// rows × (1 insert + updates) changes, batch at a time, every pause.
	rows    = 2000
	updates = 4
	changes = rows * (1 + updates)
	batch   = 100
	pause   = 150 * time.Millisecond
	workers = 3
)

// TestJetStreamClusterFailover runs 10,000 captured changes through one
// capture process and three partitioned workers on a three-node
// JetStream cluster with streams replicated three times and, while they
// flow, kills the stream's leader with SIGKILL (and restarts it), kills a
// worker (and restarts it), and freezes another node for 10 s (SIGSTOP,
// then SIGCONT: to its peers and clients it is cut off, as in a network
// partition). Every change must be delivered, duplicates only under
// their first delivery's idempotency key, each entity's changes in
// commit order. The result line gives the longest pause in deliveries.
func TestJetStreamClusterFailover(t *testing.T) {
	cl := e2e.StartNATSCluster(t, 3)
	recv := e2e.NewReceiver(t)
	r := e2e.NewRig(t, "nats", e2e.Options{
		Receiver: recv,
		NATSURL:  cl.URL(),
		Observers: map[string]e2e.Observer{
			"cluster": {Actions: []map[string]any{recv.Action("cluster", nil)}},
		},
		Env: []string{"MILLRACE_NATS__REPLICAS=3", "MILLRACE_NATS__ACK_WAIT=5s"},
	})
	if r.Partitions == 0 {
		t.Fatal("the nats example config sets no partitions; the workers would not share the stream in order")
	}
	capture := start(t, r, "capture", "--role", "capture")
	var ws []*e2e.Process
	for i := range workers {
		ws = append(ws, start(t, r, "worker "+strconv.Itoa(i), "--role", "observe"))
	}

	e2e.WaitDealt(t, r.Partitions, time.Minute, ws...)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	produced := make(chan error, 1)
	begin := time.Now()
	go func() { produced <- r.Flow(ctx, rows, 1+updates, batch, pause) }()
	recv.Wait(t, time.Minute, "a first delivery", func() bool { return recv.Count("cluster") > 0 })

	// The stream's leader dies and comes back.
	sleep(t, ctx, 2*time.Second)
	leader, err := cl.StreamLeader(r.Stream)
	if err != nil {
		t.Fatal(err)
	}
	leaderKilled := time.Now()
	cl.Servers[leader].Stop(syscall.SIGKILL)
	t.Logf("%s: killed the stream leader %s", since(begin), cl.Name(leader))
	sleep(t, ctx, 5*time.Second)
	cl.Servers[leader].Start()
	t.Logf("%s: restarted %s", since(begin), cl.Name(leader))

	// A worker dies without draining and comes back.
	sleep(t, ctx, 2*time.Second)
	ws[0].Kill()
	t.Logf("%s: killed worker 0", since(begin))
	sleep(t, ctx, 2*time.Second)
	ws[0].Start()
	t.Logf("%s: restarted worker 0", since(begin))

	// Another node is cut off for 10 s.
	cut := (leader + 1) % len(cl.Servers)
	cl.Servers[cut].Signal(syscall.SIGSTOP)
	t.Logf("%s: froze %s for 10s", since(begin), cl.Name(cut))
	sleep(t, ctx, 10*time.Second)
	cl.Servers[cut].Signal(syscall.SIGCONT)
	t.Logf("%s: thawed %s", since(begin), cl.Name(cut))

	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	if made := len(r.Produced()); made != changes {
		t.Fatalf("made %d changes, want %d", made, changes)
	}
	recv.Wait(t, 3*time.Minute, "every change delivered", func() bool {
		return e2e.Count(r.Produced(), recv.Requests("cluster")).Delivered == changes
	})
	// Late redeliveries of messages held at a kill still count.
	time.Sleep(3 * time.Second)
	reqs := recv.Requests("cluster")
	tl := e2e.Count(r.Produced(), reqs)
	if p := tl.Problems(); p != "" {
		t.Errorf("%s", p)
	}
	reordered := e2e.OutOfOrder(reqs)
	for _, r := range reordered[:min(10, len(reordered))] {
		t.Errorf("%s", r)
	}
	gap, at := longestPause(reqs, leaderKilled)
	restarts := 0
	for _, p := range append([]*e2e.Process{capture}, ws...) {
		if !p.Running() {
			t.Errorf("a millrace process exited during the run")
		}
		restarts += p.CountLogs(func(l e2e.LogLine) bool {
			return l.Msg == "jetstream: deliveries were lost on the way; restarting the consumer at its ack floor to keep each entity's order"
		})
	}
	t.Logf("%s; took %s", r.Describe(), since(begin))
	// The last line is the run's result.
	t.Logf("cluster nats: changes=%d lost=%d duplicates=%d reordered=%d longest_pause=%s (at +%s from the leader's kill) consumer_restarts=%d",
		tl.Changes, len(tl.Lost), tl.Duplicates, len(reordered), gap.Round(10*time.Millisecond), at.Round(100*time.Millisecond), restarts)
}

// start runs one process of the rig's config with its own HTTP port and
// waits until it is ready.
func start(t *testing.T, r *e2e.Rig, name string, args ...string) *e2e.Process {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	env := append(append([]string{}, r.Env...), "MILLRACE_HTTP__ADDR="+addr)
	p := e2e.NewProcess(t, name, e2e.Binary(t), append([]string{"run", "-c", r.Config}, args...), env)
	p.Start()
	p.WaitReady("http://"+addr+"/readyz", 60*time.Second)
	return p
}

// longestPause is the longest time without an accepted delivery from
// the first one on, and when it began, from ref.
func longestPause(reqs []*e2e.Delivery, ref time.Time) (gap, at time.Duration) {
	var times []time.Time
	for _, d := range reqs {
		if d.OK() {
			times = append(times, d.At)
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	for i := 1; i < len(times); i++ {
		if g := times[i].Sub(times[i-1]); g > gap {
			gap, at = g, times[i-1].Sub(ref)
		}
	}
	return gap, at
}

func sleep(t *testing.T, ctx context.Context, d time.Duration) {
	t.Helper()
	select {
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	case <-time.After(d):
	}
}

func since(t time.Time) string { return fmt.Sprint(time.Since(t).Round(100 * time.Millisecond)) }

// TestRedisSentinelFailover runs 5,000 captured changes with Redis
// reached through Sentinel, and kills the Redis primary with SIGKILL
// while they flow: on the nats topology Redis holds the dedup ledger and
// result cache, on the redis topology the bus too, which publishes with
// redis.wait_replicas = 1 (an event the capture moved past is on the
// replica). The sentinels promote the replica, and the old primary
// comes back as its replica; meanwhile the ledger
// fails open (events run without dedup, counted in
// millrace_dedup_errors_total, which the result line reports) and
// afterwards the client follows the new master: the dedup key of a change
// made then is on it. Nothing may be lost.
func TestRedisSentinelFailover(t *testing.T) {
	for _, topology := range []string{"nats", "redis"} {
		t.Run(topology, func(t *testing.T) {
			t.Parallel()
			testRedisSentinelFailover(t, topology)
		})
	}
}

func testRedisSentinelFailover(t *testing.T, topology string) {
	sen := e2e.StartRedisSentinel(t)
	recv := e2e.NewReceiver(t)
	r := e2e.NewRig(t, topology, e2e.Options{
		Receiver: recv,
		RedisURL: sen.URL(),
		Observers: map[string]e2e.Observer{
			"sentinel": {Actions: []map[string]any{recv.Action("sentinel", nil)}},
		},
		Env: []string{"MILLRACE_NATS__ACK_WAIT=5s", "MILLRACE_REDIS__WAIT_REPLICAS=1"},
	})
	r.Start()
	const rows, rounds = 1000, 5
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	produced := make(chan error, 1)
	begin := time.Now()
	go func() { produced <- r.Flow(ctx, rows, rounds, batch, 100*time.Millisecond) }()
	recv.Wait(t, time.Minute, "a first delivery", func() bool { return recv.Count("sentinel") > 0 })

	sleep(t, ctx, 2*time.Second)
	old := sen.Primary.Addr()
	sen.Primary.Stop(syscall.SIGKILL)
	killed := time.Now()
	t.Logf("%s: killed the Redis primary %s", since(begin), old)
	var promoted time.Duration
	for {
		if addr, err := sen.MasterAddr(); err == nil && addr != old {
			promoted = time.Since(killed)
			t.Logf("%s: the sentinels promoted %s", since(begin), addr)
			break
		}
		if time.Since(killed) > time.Minute {
			t.Fatal("the sentinels promoted no replica within a minute")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The old primary comes back, and the sentinels make it the new
	// master's replica: with redis.wait_replicas = 1 the redis topology's
	// capture waits for one (the changes wait in PostgreSQL meanwhile).
	sen.Primary.Start()

	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	want := rows * rounds
	recv.Wait(t, 3*time.Minute, "every change delivered", func() bool {
		return e2e.Count(r.Produced(), recv.Requests("sentinel")).Delivered == want
	})
	time.Sleep(2 * time.Second)
	tl := e2e.Count(r.Produced(), recv.Requests("sentinel"))
	if p := tl.Problems(); p != "" {
		t.Errorf("%s", p)
	}
	// The ledger fails open while no master answers; how many calls
	// fail depends on when they fall (go-redis retries a call through a
	// short failover), so the count is reported, not required.
	dedupErrors := r.Metric(t, "millrace_dedup_errors_total")
	// A change made after the failover runs once, and its dedup key is on
	// the new master: the client followed it.
	tail := recv.Count("sentinel")
	if err := r.Update(ctx, e2e.Range(1, 2), "after"); err != nil {
		t.Fatal(err)
	}
	recv.Wait(t, 30*time.Second, "the change after the failover", func() bool { return recv.Count("sentinel") > tail })
	master, err := sen.MasterAddr()
	if err != nil {
		t.Fatal(err)
	}
	reqs := recv.Requests("sentinel")
	last := reqs[len(reqs)-1].Event
	mc := redis.NewClient(&redis.Options{Addr: master})
	defer mc.Close()
	key := r.RedisPrefix + stores.DedupKey(last.ID, "sentinel")
	if n, err := mc.Exists(ctx, key).Result(); err != nil || n != 1 {
		t.Errorf("the new master %s does not hold %s (exists %d, %v): the ledger did not follow the failover", master, key, n, err)
	}
	t.Logf("%s; took %s", r.Describe(), since(begin))
	// The last line is the run's result.
	t.Logf("sentinel %s: changes=%d lost=%d duplicates=%d failover=%s dedup_errors=%.0f",
		topology, tl.Changes, len(tl.Lost), tl.Duplicates, promoted.Round(100*time.Millisecond), dedupErrors)
}
