package bench

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/internal/testenv"
)

// TestCaptureProducer checks the load of the capture topologies without
// running them: rows COPYed by copySend into the watched tables that
// prepare sets up reach each source's change log, split across the
// sources, and cleanup drops every schema of the run.
func TestCaptureProducer(t *testing.T) {
	t.Parallel()
	for _, spec := range []topoSpec{specs["nats"], specs["multidb"]} {
		t.Run(spec.name, func(t *testing.T) {
			t.Parallel()
			s := &suite{opts: Options{PostgresURL: testenv.PostgresURL(), RedisURL: testenv.RedisURL(), NATSURL: testenv.NATSURL()},
				filler: filler(DefaultPayload)}
			s.opts.setDefaults()
			s.logger = s.opts.Logger
			defer s.close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			env, err := s.prepare(ctx, spec, false)
			if err != nil {
				s.cleanup(spec, env)
				t.Fatal(err)
			}
			if len(env.schemas) != spec.sources {
				t.Fatalf("%d schemas; want %d", len(env.schemas), spec.sources)
			}
			pool, err := s.postgres(ctx)
			if err != nil {
				t.Fatal(err)
			}
			const n = 1234
			rec := newRecorder(n)
			if err := pace(ctx, rec, n, 0, s.copySend(pool, env.schemas)); err != nil {
				s.cleanup(spec, env)
				t.Fatal(err)
			}
			total := 0
			for _, schema := range env.schemas {
				var rows, entities int
				q := pgx.Identifier{schema}.Sanitize()
				err := pool.QueryRow(ctx, "SELECT count(*), count(*) FILTER (WHERE entity_type = $1 AND (after_image->>'n')::bigint >= 0) FROM "+q+".change_log",
					benchEntity).Scan(&rows, &entities)
				if err != nil {
					t.Fatal(err)
				}
				if entities != rows {
					t.Errorf("%s: %d of %d changes are %s rows with data.n", schema, entities, rows, benchEntity)
				}
				if want := n / spec.sources; rows < want {
					t.Errorf("%s: %d changes; want at least %d", schema, rows, want)
				}
				total += rows
			}
			if total != n {
				t.Errorf("%d changes captured; want %d", total, n)
			}
			s.cleanup(spec, env)
			var left int
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1", "%"+env.id+"%").Scan(&left); err != nil {
				t.Fatal(err)
			}
			if left != 0 {
				t.Errorf("%d schemas of the run left after cleanup", left)
			}
		})
	}
}

func TestLatencyPercentiles(t *testing.T) {
	r := newRecorder(100)
	base := time.Now()
	for i := range 100 {
		r.mark(int64(i), base)
		r.lat[i].Store(int64(i+1) * int64(time.Millisecond)) // 1..100 ms
	}
	r.mark(5, base)   // a duplicate
	r.mark(100, base) // not an event of the run
	if got := r.latency(); got.P50 != 50 || got.P95 != 95 || got.P99 != 99 || got.Max != 100 {
		t.Errorf("latency = %+v; want p50 50, p95 95, p99 99, max 100", got)
	}
	if r.dups.Load() != 1 || r.bad.Load() != 1 || r.done.Load() != 100 {
		t.Errorf("dups %d, bad %d, done %d; want 1, 1, 100", r.dups.Load(), r.bad.Load(), r.done.Load())
	}
	select {
	case <-r.all:
	default:
		t.Error("all is not closed after every event was marked")
	}
}

func TestPaceSteadyRate(t *testing.T) {
	t.Parallel()
	const n, rate = 60, 200 // 0.3 s
	rec := newRecorder(n)
	var sent int
	start := time.Now()
	err := pace(context.Background(), rec, n, rate, func(_ context.Context, from, to int) error {
		if from != sent {
			t.Errorf("send(%d, %d) after %d sent", from, to, sent)
		}
		sent = to
		return nil
	})
	if err != nil || sent != n {
		t.Fatalf("pace: %v, %d sent; want %d", err, sent, n)
	}
	// Paced, not sent at once: the last event is due at (n-1)/rate.
	if el := time.Since(start); el < time.Duration(n-1)*time.Second/rate-2*tick {
		t.Errorf("%d events at %d/s sent in %s", n, rate, el)
	}
}

// TestLimitSharesTheBudget checks how the budget is shared: steady-rate
// runs keep their length, saturated runs split what is left equally,
// and never get less than minLimit.
func TestLimitSharesTheBudget(t *testing.T) {
	s := &suite{opts: Options{Events: 50_000, Rate: 1_000}}
	s.opts.setDefaults()
	steadyRun := 10*time.Second + runOverhead // 10,000 events at 1,000/s
	s.deadline = time.Now().Add(3*steadyRun + 4*runOverhead + 4*time.Minute)
	s.satLeft, s.steadyLeft = 4, 3
	if got := s.limit(true); got != 0 {
		t.Errorf("steady run limit %s; want none", got)
	}
	// Left: 2 steady runs, 4 saturated ones including this one; one
	// steady run's worth was already spent on paper.
	got := s.limit(false)
	want := (4*time.Minute + steadyRun) / 4
	if got > want || got < want-time.Second {
		t.Errorf("saturated run limit %s; want about %s", got, want)
	}
	s.deadline = time.Now()
	if got := s.limit(false); got != minLimit {
		t.Errorf("limit with no time left %s; want %s", got, minLimit)
	}
	s.deadline = time.Time{}
	if got := s.limit(false); got != 0 {
		t.Errorf("limit without a budget %s; want none", got)
	}
}

// TestMeasureTimeBoxed checks that a run cut by its share of the budget
// reports the events it delivered, not a failure.
func TestMeasureTimeBoxed(t *testing.T) {
	s := &suite{opts: Options{}, prog: &progress{}}
	s.opts.setDefaults()
	s.logger, s.prog.w = s.opts.Logger, s.opts.Progress
	f := s.measure(context.Background(), "cut", 10, 0, "", func(_ context.Context, rec *recorder, w *window) error {
		w.begin()
		rec.started(time.Now())
		for i := range 4 {
			rec.mark(int64(i), time.Now())
		}
		time.Sleep(10 * time.Millisecond)
		rec.mark(4, time.Now())
		w.end()
		return errTimeBoxed
	})
	if f.Error != "" || !f.TimeBoxed || f.Delivered != 5 || f.Throughput <= 0 || !f.ok() {
		t.Errorf("figures %+v; want 5 delivered, time-boxed, a throughput and no error", f)
	}
	f = s.measure(context.Background(), "short", 10, 0, "", func(_ context.Context, rec *recorder, w *window) error {
		rec.mark(0, time.Now())
		return nil
	})
	if f.Error == "" || f.ok() {
		t.Errorf("figures %+v; want an error for a run that delivered 1 of 10 events", f)
	}
}

// TestPGProcesses checks the PostgreSQL CPU figure's parts: the backend
// of a connection this process holds is found by its client port, and
// the CPU of a query it runs shows in the difference of two readings.
func TestPGProcesses(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, testenv.PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	var pid int32
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	before := pgProcesses(ctx, pool)
	if _, ok := before[pid]; !ok {
		t.Fatalf("backend %d of this process's connection is not among the processes read: %v", pid, before)
	}
	if _, err := conn.Exec(ctx, "SELECT count(*) FROM generate_series(1, 5000000)"); err != nil {
		t.Fatal(err)
	}
	after := pgProcesses(ctx, pool)
	if d := after[pid] - before[pid]; d <= 0 {
		t.Errorf("backend %d: %s of CPU over a query counting 5,000,000 rows; want some", pid, d)
	}
	m := &writeMeter{}
	send := m.wrap(func(context.Context, int, int) error { time.Sleep(20 * time.Millisecond); return nil })
	if err := send(ctx, 0, 500); err != nil {
		t.Fatal(err)
	}
	srv := []serverProc{{name: "redis", pid: 7, cpu: time.Second}}
	c := captureCost("wal", m, before, after, srv, []serverProc{{name: "redis", pid: 7, cpu: 1500 * time.Millisecond}})
	if c.Rows != 500 || c.WriteSeconds < 0.02 || c.WritePer10k < 0.4 || c.PGProcesses != len(after) || c.PGCPUPer10k <= 0 {
		t.Errorf("capture cost %+v; want 500 rows, at least 20 ms of writes (0.4 s per 10k), the processes read and their CPU", c)
	}
	if want := []ServerCPU{{Server: "redis", PID: 7, Seconds: 0.5, Per10k: 10}}; !slices.Equal(c.Servers, want) {
		t.Errorf("servers %+v; want %+v", c.Servers, want)
	}
}

// TestServerProcesses checks the servers' CPU figure's parts: the Redis
// server the tests use is found by the port it listens on, and the CPU
// of commands sent to it shows in the difference of two readings.
func TestServerProcesses(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	port, ok := urlPort(testenv.RedisURL(), 6379)
	if !ok {
		t.Fatalf("the tests' Redis %s is not on this machine", testenv.RedisURL())
	}
	before := serverProcesses([]service{{"redis", port}})
	if len(before) != 1 || before[0].name != "redis" || before[0].pid <= 0 {
		t.Fatalf("servers read %+v; want the Redis server listening on %d (its /proc/<pid>/fd must be readable: root, or the server's user)", before, port)
	}
	opts, err := redis.ParseURL(testenv.RedisURL())
	if err != nil {
		t.Fatal(err)
	}
	client := redis.NewClient(opts)
	defer client.Close()
	key := "millrace:bench-test:" + t.Name()
	defer client.Del(context.WithoutCancel(ctx), key)
	for range 20 {
		pipe := client.Pipeline()
		for range 2000 {
			pipe.Incr(ctx, key)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	after := reread(before)
	if len(after) != 1 || after[0].cpu <= before[0].cpu {
		t.Errorf("Redis CPU %+v after 40,000 commands, %+v before; want more", after, before)
	}
}

func TestURLPort(t *testing.T) {
	for _, c := range []struct {
		url  string
		port int
		ok   bool
	}{
		{"nats://127.0.0.1:4333", 4333, true},
		{"redis://localhost/0", 6379, true},
		{"redis://[::1]:6380/0", 6380, true},
		{"nats://nats.example:4222", 0, false},
	} {
		port, ok := urlPort(c.url, 6379)
		if port != c.port || ok != c.ok {
			t.Errorf("urlPort(%q) = %d, %v; want %d, %v", c.url, port, ok, c.port, c.ok)
		}
	}
}
