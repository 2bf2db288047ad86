package fault_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/internal/e2e"
	"github.com/millrace/millrace/internal/procfs"
	"github.com/millrace/millrace/internal/testenv"
)

func TestMain(m *testing.M) { e2e.Main(m) }

// flow makes rows × rounds changes in a goroutine, batch at a time,
// every pause; the channel gets its error.
func flow(ctx context.Context, r *e2e.Rig, rows, rounds, batch int, pause time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() { done <- r.Flow(ctx, rows, rounds, batch, pause) }()
	return done
}

// deliverAll waits for the flow and then, up to within, for every change
// at path, and returns the tally; it fails the test on a loss, with
// diag's description of the process when diag is set.
func deliverAll(t *testing.T, r *e2e.Rig, recv *e2e.Receiver, path string, done <-chan error, within time.Duration, diag func() string) e2e.Tally {
	t.Helper()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	n := len(r.Produced())
	deadline := time.Now().Add(within)
	for recv.Count(path) < n || e2e.Count(r.Produced(), recv.Requests(path)).Delivered < n {
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("%d of %d changes delivered at /%s within %s", e2e.Count(r.Produced(), recv.Requests(path)).Delivered, n, path, within)
			if diag != nil {
				msg += "; " + diag()
			}
			t.Fatal(msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	tl := e2e.Count(r.Produced(), recv.Requests(path))
	if p := tl.Problems(); p != "" {
		t.Fatal(p)
	}
	return tl
}

// acceptedBetween counts the requests to path accepted in [from, to).
func acceptedBetween(recv *e2e.Receiver, path string, from, to time.Time) int {
	n := 0
	for _, d := range recv.Delivered(path) {
		if !d.At.Before(from) && d.At.Before(to) {
			n++
		}
	}
	return n
}

func observeAll(recv *e2e.Receiver) map[string]e2e.Observer {
	return map[string]e2e.Observer{"all": {Actions: []map[string]any{recv.Action("all", nil)}}}
}

// redisServer is the private Redis of TestRedisDown.
type redisServer interface {
	url() string
	stop()
	start()
}

type volatileRedis struct{ *testenv.RedisServer }

func (v volatileRedis) url() string { return v.URL() }
func (v volatileRedis) stop()       { v.Stop() }
func (v volatileRedis) start()      { v.Start() }

type durableRedis struct{ *e2e.Server }

func (d durableRedis) url() string { return d.RedisURL() }
func (d durableRedis) stop()       { d.Stop(syscall.SIGKILL) }
func (d durableRedis) start()      { d.Start() }

// TestRedisDown stops Redis for 10 s while changes flow. Where Redis
// holds the dedup ledger and the result cache (every topology but redis,
// whose stores are moved there when they are not already), events keep
// flowing while it is down (fail-open) and the store errors are counted;
// where Redis is the bus (redis), it restarts with its append-only file
// and the bus picks up where it was. Nothing is lost either way.
func TestRedisDown(t *testing.T) {
	for _, topology := range e2e.Runs() {
		t.Run(topology, func(t *testing.T) {
			t.Parallel()
			bus, _ := e2e.BusOf(topology)
			var srv redisServer
			var env []string
			switch bus {
			case e2e.BusRedis:
				srv = durableRedis{e2e.StartRedisServer(t)}
			case e2e.BusJetStream:
				srv = volatileRedis{testenv.StartRedis(t)} // the topology keeps its stores in Redis
			default:
				srv = volatileRedis{testenv.StartRedis(t)}
				env = []string{"MILLRACE_DEDUP__STORE=redis", "MILLRACE_CACHE__STORE=redis"}
			}
			recv := e2e.NewReceiver(t)
			r := e2e.NewRig(t, topology, e2e.Options{Receiver: recv, Observers: observeAll(recv), RedisURL: srv.url(), Env: env})
			r.Start()
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			done := flow(ctx, r, 200, 5, 20, 200*time.Millisecond)
			time.Sleep(2 * time.Second)
			srv.stop()
			down := time.Now()
			time.Sleep(10 * time.Second)
			srv.start()
			up := time.Now()
			tl := deliverAll(t, r, recv, "all", done, 3*time.Minute, nil)
			during := acceptedBetween(recv, "all", down.Add(time.Second), up)
			dedupErrs, cacheErrs := r.Metric(t, "millrace_dedup_errors_total"), r.Metric(t, "millrace_cache_errors_total")
			if bus != e2e.BusRedis {
				if during == 0 {
					t.Errorf("no event was delivered while Redis was down: the stores do not fail open")
				}
				if dedupErrs+cacheErrs == 0 {
					t.Errorf("millrace_dedup_errors_total and millrace_cache_errors_total stayed 0 while Redis was down")
				}
			}
			t.Logf("fault redis-down %s: changes=%d down=%s delivered_while_down=%d dedup_errors=%v cache_errors=%v lost=%d duplicates=%d",
				topology, tl.Changes, up.Sub(down).Round(100*time.Millisecond), during, dedupErrs, cacheErrs, len(tl.Lost), tl.Duplicates)
		})
	}
}

// TestNATSRestart restarts a private NATS server (JetStream on disk)
// while changes flow, on the topologies whose bus is a NATS server:
// millrace reconnects and nothing is lost.
func TestNATSRestart(t *testing.T) {
	for _, topology := range e2e.Runs() {
		if bus, _ := e2e.BusOf(topology); bus != e2e.BusJetStream {
			continue // no NATS server outside the process
		}
		t.Run(topology, func(t *testing.T) {
			t.Parallel()
			srv := e2e.StartNATSServer(t)
			recv := e2e.NewReceiver(t)
			r := e2e.NewRig(t, topology, e2e.Options{Receiver: recv, Observers: observeAll(recv), NATSURL: srv.NATSURL()})
			r.Start()
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			done := flow(ctx, r, 200, 5, 20, 200*time.Millisecond)
			time.Sleep(2 * time.Second)
			srv.Stop(syscall.SIGTERM)
			down := time.Now()
			time.Sleep(5 * time.Second)
			srv.Start()
			up := time.Now()
			tl := deliverAll(t, r, recv, "all", done, 3*time.Minute, nil)
			after := acceptedBetween(recv, "all", up, time.Now().Add(time.Hour))
			if after == 0 {
				t.Errorf("nothing was delivered after the NATS server came back")
			}
			t.Logf("fault nats-restart %s: changes=%d down=%s delivered_after_restart=%d lost=%d duplicates=%d",
				topology, tl.Changes, up.Sub(down).Round(100*time.Millisecond), after, len(tl.Lost), tl.Duplicates)
		})
	}
}

// TestPostgresConnectionsKilled terminates the capture's connections
// (pg_terminate_backend) three times while changes flow, on the
// topologies that capture, with triggers and with WAL capture (where the
// walsender is among them): the capture reconnects, resumes from its
// checkpoint or its slot's confirmed position (which never moves back),
// and nothing is lost.
func TestPostgresConnectionsKilled(t *testing.T) {
	for _, topology := range e2e.Runs() {
		if !e2e.ExampleCaptures(t, topology) {
			continue // no capture
		}
		t.Run(topology, func(t *testing.T) {
			t.Parallel()
			recv := e2e.NewReceiver(t)
			r := e2e.NewRig(t, topology, e2e.Options{Receiver: recv, Observers: observeAll(recv)})
			r.Start()
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			watch := watchCheckpoints(ctx, t, r)
			done := flow(ctx, r, 200, 5, 20, 200*time.Millisecond)
			admin := r.Sources[0].Pool
			killed, captures := 0, 0
			for range 3 {
				time.Sleep(2 * time.Second)
				// The capture reconnects with a backoff (with WAL capture,
				// while the server still counts the slot active for the
				// killed walsender): wait for it, so that each round kills
				// a capture connection.
				waitCaptureConnection(ctx, t, r, admin, 30*time.Second)
				// The process's connections, found by their client ports:
				// application_name cannot tell them from another test's.
				ports, err := procfs.LocalPorts(r.Proc.PID(), int(admin.Config().ConnConfig.Port))
				if err != nil {
					t.Fatal(err)
				}
				var n, c int
				err = admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)),
						count(*) FILTER (WHERE application_name LIKE 'millrace capture%')
					FROM pg_stat_activity
					WHERE client_addr = '127.0.0.1' AND client_port = ANY($1) AND pid <> pg_backend_pid()`, ports).Scan(&n, &c)
				if err != nil {
					t.Fatal(err)
				}
				if c == 0 {
					t.Fatalf("no capture connection among the %d connections of millrace terminated", n)
				}
				killed += n
				captures += c
			}
			tl := deliverAll(t, r, recv, "all", done, 3*time.Minute, nil)
			caughtUp := watch.waitCaughtUp(t)
			cancel()
			if back := watch.stop(); len(back) > 0 {
				t.Errorf("a checkpoint moved back: %v", back[:min(5, len(back))])
			}
			t.Logf("fault postgres-terminate %s: changes=%d terminations=3 connections_killed=%d (capture %d) checkpoints=%s lost=%d duplicates=%d",
				topology, tl.Changes, killed, captures, caughtUp, len(tl.Lost), tl.Duplicates)
		})
	}
}

// waitCaptureConnection waits until the process of r holds a capture
// connection to PostgreSQL.
func waitCaptureConnection(ctx context.Context, t *testing.T, r *e2e.Rig, admin *pgxpool.Pool, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ports, err := procfs.LocalPorts(r.Proc.PID(), int(admin.Config().ConnConfig.Port))
		if err != nil {
			t.Fatal(err)
		}
		var c int
		if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE client_addr = '127.0.0.1' AND client_port = ANY($1) AND application_name LIKE 'millrace capture%'`,
			ports).Scan(&c); err != nil {
			t.Fatal(err)
		}
		if c > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the process has no capture connection to PostgreSQL after %s", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkpoints samples the capture checkpoints of a rig's sources.
type checkpoints struct {
	r    *e2e.Rig
	mu   sync.Mutex
	last map[string]int64
	back []string
	wg   sync.WaitGroup
}

func watchCheckpoints(ctx context.Context, t *testing.T, r *e2e.Rig) *checkpoints {
	c := &checkpoints{r: r, last: map[string]int64{}}
	c.wg.Go(func() {
		for ctx.Err() == nil {
			c.sample(ctx)
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	return c
}

func (c *checkpoints) sample(ctx context.Context) map[string]int64 {
	now := map[string]int64{}
	for _, s := range c.r.Sources {
		if s.Slot != "" {
			var pos int64
			if err := s.Pool.QueryRow(ctx, "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
				s.Slot).Scan(&pos); err == nil {
				now[s.Slot] = pos
			}
			continue
		}
		rows, err := s.Pool.Query(ctx, "SELECT source, consumer_group, position FROM "+
			pgx.Identifier{s.Schema, "checkpoints"}.Sanitize())
		if err != nil {
			continue // not created yet, or the test is ending
		}
		for rows.Next() {
			var src, group string
			var pos int64
			if rows.Scan(&src, &group, &pos) == nil {
				now[s.Schema+"/"+src+"/"+group] = pos
			}
		}
		rows.Close()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, pos := range now {
		if prev, ok := c.last[k]; ok && pos < prev {
			c.back = append(c.back, fmt.Sprintf("%s: %d after %d", k, pos, prev))
		}
		c.last[k] = max(pos, c.last[k])
	}
	return now
}

// waitCaughtUp waits until every checkpoint reached the last position of
// its change log (with WAL capture: every slot's confirmed position, the
// server's WAL end when it is called), and describes them.
func (c *checkpoints) waitCaughtUp(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(time.Minute)
	var walEnd int64
	if err := c.r.Sources[0].Pool.QueryRow(ctx, "SELECT (pg_current_wal_lsn() - '0/0')::bigint").Scan(&walEnd); err != nil {
		t.Fatal(err)
	}
	for {
		var desc []string
		ok := true
		for _, s := range c.r.Sources {
			if s.Slot != "" {
				var pos int64
				if err := s.Pool.QueryRow(ctx, "SELECT coalesce((confirmed_flush_lsn - '0/0')::bigint, 0) FROM pg_replication_slots WHERE slot_name = $1",
					s.Slot).Scan(&pos); err != nil {
					t.Fatalf("slot %s: %v", s.Slot, err)
				}
				if pos < walEnd {
					ok = false
				}
				desc = append(desc, fmt.Sprintf("%s:%d/%d", s.Slot, pos, walEnd))
				continue
			}
			var end int64
			if err := s.Pool.QueryRow(ctx, "SELECT coalesce(max(position), 0) FROM "+
				pgx.Identifier{s.Schema, "change_log"}.Sanitize()).Scan(&end); err != nil {
				t.Fatal(err)
			}
			var min, n int64
			if err := s.Pool.QueryRow(ctx, "SELECT coalesce(min(position), 0), count(*) FROM "+
				pgx.Identifier{s.Schema, "checkpoints"}.Sanitize()).Scan(&min, &n); err != nil {
				t.Fatal(err)
			}
			if n == 0 || min < end {
				ok = false
			}
			desc = append(desc, fmt.Sprintf("%s:%d/%d", s.Name, min, end))
		}
		if ok {
			return fmt.Sprint(desc)
		}
		if time.Now().After(deadline) {
			t.Fatalf("checkpoints not caught up within a minute: %v", desc)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *checkpoints) stop() []string {
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.back
}

// TestSlowWebhook: an endpoint that never answers within its action's
// timeout does not starve the other observers of the same events: their
// latency stays low.
func TestSlowWebhook(t *testing.T) {
	for _, topology := range e2e.Runs() {
		t.Run(topology, func(t *testing.T) {
			t.Parallel()
			slow, fast := e2e.NewReceiver(t), e2e.NewReceiver(t)
			slow.Handle("slow", func(*e2e.Delivery) (int, time.Duration) { return http.StatusNoContent, time.Minute })
			r := e2e.NewRig(t, topology, e2e.Options{
				Receiver: slow,
				Observers: map[string]e2e.Observer{
					"slow": {
						Timeout: "1s", OnFailure: "drop",
						Retry:   map[string]any{"max_attempts": 2, "initial": "100ms"},
						Actions: []map[string]any{slow.Action("slow", nil)},
					},
					"fast": {Actions: []map[string]any{fast.Action("fast", map[string]any{"secret_env": "MILLRACE_E2E_FAST_SECRET"})}},
				},
				Env: []string{fast.EnvAs("MILLRACE_E2E_FAST_SECRET")},
			})
			r.Start()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			// 10 events a second for 15 s, each of its own entity.
			done := flow(ctx, r, 150, 1, 2, 200*time.Millisecond)
			tl := deliverAll(t, r, fast, "fast", done, time.Minute, func() string {
				return fmt.Sprintf("slow endpoint: %d requests; millrace_breaker_state=%v, breaker_open refusals=%v",
					len(slow.Requests("slow")), r.Metric(t, "millrace_breaker_state"),
					r.Metric(t, `millrace_action_runs_total{action="0:webhook",observer="slow",result="breaker_open"}`))
			})
			var lat []time.Duration
			for _, d := range fast.Delivered("fast") {
				lat = append(lat, d.At.Sub(d.Event.Timestamp))
			}
			slices.Sort(lat)
			p50, p95, worst := lat[len(lat)/2], lat[len(lat)*95/100], lat[len(lat)-1]
			// The slow endpoint holds each event for 2 timeouts of 1s: an
			// observer that waited for it would see seconds.
			if p95 > time.Second {
				t.Errorf("the fast observer's p95 latency is %s (p50 %s, max %s) beside an endpoint that times out", p95, p50, worst)
			}
			t.Logf("fault slow-webhook %s: events=%d slow_requests=%d fast p50=%s p95=%s max=%s lost=%d",
				topology, tl.Changes, len(slow.Requests("slow")), p50.Round(time.Millisecond), p95.Round(time.Millisecond),
				worst.Round(time.Millisecond), len(tl.Lost))
		})
	}
}
