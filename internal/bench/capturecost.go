package bench

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/bus/wal"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/internal/procfs"
)

// CaptureCost is what capturing the run's changes cost PostgreSQL and the
// writer, per capture mode: the figures that compare triggers with the
// write-ahead log.
type CaptureCost struct {
	// Mode is the sources' capture, "trigger" or "wal".
	Mode string `json:"mode"`
	// Rows is how many rows the load generator wrote during the run.
	Rows int64 `json:"rows"`
	// WriteSeconds is the load generator's time in its COPY
	// transactions, commit included: what the capture adds to the
	// user's writes shows here. WritePer10k is the same per 10,000 rows.
	WriteSeconds float64 `json:"write_s"`
	WritePer10k  float64 `json:"write_s_per_10k_rows"`
	// PGCPUSeconds is the CPU time (user + system) of the PostgreSQL
	// processes that served this process during the run: the backends of
	// the load generator and of millrace and, with capture = "wal", the
	// walsender. PGCPUPer10k is the same per 10,000 rows. PGProcesses is
	// how many were measured; 0 when the server's processes cannot be
	// read (a server on another machine), and the figures are absent.
	PGCPUSeconds float64 `json:"pg_cpu_s"`
	PGCPUPer10k  float64 `json:"pg_cpu_s_per_10k_rows"`
	PGProcesses  int     `json:"pg_processes"`
	// Servers is the CPU time of the bus's and the ledger's servers
	// (NATS, Redis) during the run, those that listen on this machine:
	// with PostgreSQL's and the process's, where the machine's CPU per
	// event goes. The whole server counts, whoever it served.
	Servers []ServerCPU `json:"servers,omitempty"`
}

// ServerCPU is one server's CPU time during a run.
type ServerCPU struct {
	// Server is "nats" or "redis".
	Server string `json:"server"`
	PID    int    `json:"pid"`
	// Seconds is its user + system CPU time during the run; Per10k the
	// same per 10,000 rows written.
	Seconds float64 `json:"cpu_s"`
	Per10k  float64 `json:"cpu_s_per_10k_rows"`
}

// writeMeter times the load generator's writes.
type writeMeter struct {
	rows atomic.Int64
	nano atomic.Int64
}

// wrap returns send, timed.
func (m *writeMeter) wrap(send sendFunc) sendFunc {
	return func(ctx context.Context, from, to int) error {
		t0 := time.Now()
		err := send(ctx, from, to)
		m.nano.Add(int64(time.Since(t0)))
		if err == nil {
			m.rows.Add(int64(to - from))
		}
		return err
	}
}

// pgSnapshot is the CPU time so far of each PostgreSQL process serving
// this process, by pid.
type pgSnapshot map[int32]time.Duration

// pgProcesses reads the CPU time of the server processes whose client is
// this process: pg_stat_activity's client_port among this process's
// local TCP ports. Shared background processes (WAL writer,
// checkpointer, autovacuum) serve every database on the server and are
// left out, as are connections that closed before the reading. It
// returns nil when the server is not on this machine or /proc cannot be
// read.
func pgProcesses(ctx context.Context, pool *pgxpool.Pool) pgSnapshot {
	ports, err := procfs.LocalPorts(os.Getpid(), int(pool.Config().ConnConfig.Port))
	if err != nil || len(ports) == 0 {
		return nil
	}
	rows, err := pool.Query(ctx, `SELECT pid FROM pg_stat_activity
		WHERE client_port = ANY($1) AND (client_addr <<= '127.0.0.0/8' OR client_addr = '::1')`, ports)
	if err != nil {
		return nil
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil
	}
	snap := pgSnapshot{}
	for _, pid := range pids {
		if d, ok := procCPU(int(pid)); ok {
			snap[pid] = d
		}
	}
	return snap
}

// serverProc is a server's process and its CPU time at a reading.
type serverProc struct {
	name string
	pid  int
	cpu  time.Duration
}

// service is a service's server, by name, and the port it listens on.
type service struct {
	name string
	port int
}

// serverProcesses reads the CPU time of the servers listening on this
// machine; a server whose process cannot be found or read is left out.
func serverProcesses(servers []service) []serverProc {
	var procs []serverProc
	for _, s := range servers {
		pid, err := procfs.ListenerPID(s.port)
		if err != nil {
			continue
		}
		if d, ok := procCPU(pid); ok {
			procs = append(procs, serverProc{name: s.name, pid: pid, cpu: d})
		}
	}
	return procs
}

// reread reads the same processes again.
func reread(procs []serverProc) []serverProc {
	var again []serverProc
	for _, p := range procs {
		if d, ok := procCPU(p.pid); ok {
			again = append(again, serverProc{name: p.name, pid: p.pid, cpu: d})
		}
	}
	return again
}

// urlPort is the port of a service URL ("nats://127.0.0.1:4222",
// "redis://127.0.0.1:6379/0"), or def when it names none; false when it
// names a host other than this machine's loopback or localhost.
func urlPort(raw string, def int) (int, bool) {
	u, err := url.Parse(raw)
	if err != nil {
		return 0, false
	}
	if h := u.Hostname(); h != "localhost" && !strings.HasPrefix(h, "127.") && h != "::1" {
		return 0, false
	}
	if u.Port() == "" {
		return def, true
	}
	port, err := strconv.Atoi(u.Port())
	return port, err == nil
}

// servers are the NATS and Redis servers of the suite's options that
// run on this machine.
func (s *suite) servers() []service {
	var servers []service
	if port, ok := urlPort(s.opts.NATSURL, 4222); ok {
		servers = append(servers, service{"nats", port})
	}
	if port, ok := urlPort(s.opts.RedisURL, 6379); ok {
		servers = append(servers, service{"redis", port})
	}
	return servers
}

// captureCost turns the meter and the two snapshots into the run's
// capture figures. A process absent at the start began during the run:
// all its CPU time counts.
func captureCost(mode string, m *writeMeter, before, after pgSnapshot, srv0, srv1 []serverProc) *CaptureCost {
	c := &CaptureCost{Mode: mode, Rows: m.rows.Load(), WriteSeconds: round3(time.Duration(m.nano.Load()).Seconds())}
	var cpu time.Duration
	for pid, d := range after {
		cpu += d - before[pid]
	}
	c.PGProcesses = len(after)
	if c.PGProcesses > 0 {
		c.PGCPUSeconds = round3(cpu.Seconds())
	}
	if c.Rows > 0 {
		c.WritePer10k = round3(time.Duration(m.nano.Load()).Seconds() * 10000 / float64(c.Rows))
		if c.PGProcesses > 0 {
			c.PGCPUPer10k = round3(cpu.Seconds() * 10000 / float64(c.Rows))
		}
	}
	for _, p1 := range srv1 {
		for _, p0 := range srv0 {
			if p0.pid != p1.pid {
				continue
			}
			d := (p1.cpu - p0.cpu).Seconds()
			sc := ServerCPU{Server: p1.name, PID: p1.pid, Seconds: round3(d)}
			if c.Rows > 0 {
				sc.Per10k = round3(d * 10000 / float64(c.Rows))
			}
			c.Servers = append(c.Servers, sc)
		}
	}
	return c
}

// captureMode is the capture of a run's sources.
func captureMode(env *runEnv) string {
	if env.wal {
		return config.CaptureWAL
	}
	return config.CaptureTrigger
}

// slotName is the replication slot (and publication) of a WAL source of
// the run: the source's schema, which holds the run id.
func slotName(schema string) string { return schema }

// dropReplication drops the run's slots and publications once millrace
// stopped: a slot left behind retains WAL for ever. A walsender that is
// still streaming after 10 s is terminated.
func dropReplication(ctx context.Context, pool *pgxpool.Pool, env *runEnv) error {
	var errs []error
	for _, schema := range env.schemas {
		name := slotName(schema)
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := wal.Drop(ctx, pool, name, name)
			if err == nil || ctx.Err() != nil {
				errs = append(errs, err)
				break
			}
			if time.Now().After(deadline) {
				// The walsender of a stopped router outlived it.
				_, _ = pool.Exec(ctx, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL", name)
				if time.Now().After(deadline.Add(5 * time.Second)) {
					errs = append(errs, fmt.Errorf("slot %s: %w", name, err))
					break
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}
