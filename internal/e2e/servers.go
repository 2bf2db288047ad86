package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/internal/testenv"
)

// NATSServerBin is the nats-server the fault tests run privately.
const NATSServerBin = "/usr/sbin/nats-server"

// Server is a private service process (nats-server, redis-server) that a
// test stops and starts again on the same port and data directory,
// without touching the shared one.
type Server struct {
	t    testing.TB
	name string
	args []string
	port int
	dir  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartNATSServer runs `nats-server -js` on a free port with its
// JetStream store in a directory of the test, so that a restart keeps
// the streams.
func StartNATSServer(t testing.TB) *Server {
	t.Helper()
	bin := natsServerBin(t)
	s := &Server{t: t, name: "nats-server", port: testenv.FreePort(t), dir: t.TempDir()}
	s.args = []string{bin, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(s.port), "-sd", s.dir}
	t.Cleanup(func() { s.Stop(syscall.SIGKILL) })
	s.Start()
	return s
}

// natsServerBin finds nats-server; the test fails when it is missing.
func natsServerBin(t testing.TB) string {
	t.Helper()
	bin := NATSServerBin
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("nats-server"); err != nil {
			t.Fatalf("e2e: nats-server is not installed (%v); test/services.sh installs it", err)
		}
	}
	return bin
}

// StartRedisServer runs a redis-server on a free port that writes every
// command to its append-only file before answering (appendfsync
// always), so that a kill loses nothing it acknowledged: unlike
// testenv.StartRedis, whose data is gone after a restart.
func StartRedisServer(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("e2e: redis-server is not installed (%v); test/services.sh installs it", err)
	}
	s := &Server{t: t, name: "redis-server", port: testenv.FreePort(t), dir: t.TempDir()}
	s.args = []string{bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(s.port), "--save", "",
		"--appendonly", "yes", "--appendfsync", "always", "--dir", s.dir, "--daemonize", "no"}
	t.Cleanup(func() { s.Stop(syscall.SIGKILL) })
	s.Start()
	return s
}

// Addr is 127.0.0.1:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// NATSURL is the server's nats:// URL.
func (s *Server) NATSURL() string { return "nats://" + s.Addr() }

// RedisURL is the server's redis:// URL.
func (s *Server) RedisURL() string { return "redis://" + s.Addr() + "/0" }

// Start starts the server and waits until its port accepts connections.
// Starting a running server does nothing.
func (s *Server) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, s.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatalf("e2e: %v", err)
	}
	defer func() { _ = logf.Close() }()
	cmd := exec.Command(s.args[0], s.args[1:]...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("e2e: start %s: %v", s.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
		if err == nil {
			_ = c.Close()
			return
		}
		select {
		case <-done:
			s.cmd, s.done = nil, nil
			s.t.Fatalf("e2e: %s exited at start: %v; see %s", s.name, err, logf.Name())
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("e2e: %s does not accept connections on %s: %v", s.name, s.Addr(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop sends sig (SIGTERM for a clean stop, SIGKILL for a crash) and
// waits for the exit. Stopping a stopped server does nothing.
func (s *Server) Stop(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd, s.done = nil, nil
}

// String names the server.
func (s *Server) String() string { return fmt.Sprintf("%s on %s", s.name, s.Addr()) }

// Cluster is a JetStream cluster of private nats-server processes on
// loopback ports, each with its own store directory, for the tests that
// kill, stop and restart its nodes.
type Cluster struct {
	// Servers are the nodes, named Name(i).
	Servers []*Server
	t       testing.TB
}

// StartNATSCluster runs n nats-server processes (NATSServerBinary)
// routed to each other as one JetStream cluster and waits until
// JetStream answers (a meta leader is elected). Every node is killed when
// the test ends.
func StartNATSCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	bin := NATSServerBinary(t)
	c := &Cluster{t: t}
	clusterPorts := make([]int, n)
	for i := range clusterPorts {
		clusterPorts[i] = testenv.FreePort(t)
	}
	for i := range n {
		s := &Server{t: t, name: c.Name(i), port: testenv.FreePort(t), dir: t.TempDir()}
		var routes []string
		for j, p := range clusterPorts {
			if j != i {
				routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(p))
			}
		}
		s.args = []string{bin, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(s.port), "-sd", s.dir,
			"-n", s.name, "--cluster_name", "millrace_test",
			"--cluster", "nats://127.0.0.1:" + strconv.Itoa(clusterPorts[i]), "--routes", strings.Join(routes, ",")}
		t.Cleanup(func() { s.Stop(syscall.SIGKILL) })
		c.Servers = append(c.Servers, s)
	}
	for _, s := range c.Servers {
		s.Start()
	}
	c.WaitJetStream(60 * time.Second)
	return c
}

// Name is the server name of node i.
func (c *Cluster) Name(i int) string { return "n" + strconv.Itoa(i+1) }

// URL lists every node, comma-separated, as nats.url takes it.
func (c *Cluster) URL() string {
	urls := make([]string, len(c.Servers))
	for i, s := range c.Servers {
		urls[i] = s.NATSURL()
	}
	return strings.Join(urls, ",")
}

// WaitJetStream waits until the cluster's JetStream answers an account
// request, which needs a meta leader.
func (c *Cluster) WaitJetStream(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = c.try(func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.AccountInfo(ctx)
			return err
		}); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatalf("e2e: the JetStream cluster does not answer after %s: %v", timeout, err)
}

// StreamLeader returns the index of the node that leads stream.
func (c *Cluster) StreamLeader(stream string) (int, error) {
	var leader string
	err := c.try(func(ctx context.Context, js jetstream.JetStream) error {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		if info.Cluster == nil || info.Cluster.Leader == "" {
			return fmt.Errorf("stream %s has no leader", stream)
		}
		leader = info.Cluster.Leader
		return nil
	})
	if err != nil {
		return -1, err
	}
	for i := range c.Servers {
		if c.Name(i) == leader {
			return i, nil
		}
	}
	return -1, fmt.Errorf("stream %s: leader %q is not a node of the cluster", stream, leader)
}

// try runs fn on a fresh connection to the cluster.
func (c *Cluster) try(fn func(context.Context, jetstream.JetStream) error) error {
	nc, err := nats.Connect(c.URL(), nats.Timeout(2*time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return fn(ctx, js)
}

// Signal sends sig to the running server without waiting: SIGSTOP and
// SIGCONT freeze and thaw it, which to its peers and clients looks like a
// network partition.
func (s *Server) Signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}

// Sentinel is a Redis primary with one replica watched by three
// sentinels, private to a test, for the tests that kill the primary.
type Sentinel struct {
	// Primary and Replica are the data servers as started; after a
	// failover the replica is the master.
	Primary, Replica *Server
	// Sentinels are the three sentinels.
	Sentinels []*Server
	// Master is the name the sentinels monitor.
	Master string
	t      testing.TB
}

// StartRedisSentinel starts a primary and a replica (append-only, fsync
// always) and three sentinels with a quorum of two, which declare the
// primary down after 1 s without an answer, and waits until the replica
// is in sync and every sentinel knows it.
func StartRedisSentinel(t testing.TB) *Sentinel {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("e2e: redis-server is not installed (%v); test/services.sh installs it", err)
	}
	x := &Sentinel{t: t, Master: "millrace"}
	x.Primary = StartRedisServer(t)
	x.Replica = StartRedisServer(t)
	x.Replica.args = append(x.Replica.args, "--replicaof", "127.0.0.1", strconv.Itoa(x.Primary.port))
	x.Replica.Stop(syscall.SIGKILL)
	x.Replica.Start()
	for range 3 {
		s := &Server{t: t, name: "redis-sentinel", port: testenv.FreePort(t), dir: t.TempDir()}
		conf := filepath.Join(s.dir, "sentinel.conf")
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\n"+
			"sentinel monitor %s 127.0.0.1 %d 2\n"+
			"sentinel down-after-milliseconds %s 1000\n"+
			"sentinel failover-timeout %s 10000\n",
			s.port, s.dir, x.Master, x.Primary.port, x.Master, x.Master)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		s.args = []string{bin, conf, "--sentinel"}
		t.Cleanup(func() { s.Stop(syscall.SIGKILL) })
		s.Start()
		x.Sentinels = append(x.Sentinels, s)
	}
	x.waitReplicas(1, 30*time.Second)
	return x
}

// URL is the redis.url of the master through the sentinels
// (go-redis's failover URL).
func (x *Sentinel) URL() string {
	u := "redis://" + x.Sentinels[0].Addr() + "/0?master_name=" + x.Master
	for _, s := range x.Sentinels[1:] {
		u += "&addr=" + s.Addr()
	}
	return u
}

// MasterAddr asks a sentinel for the current master's address.
func (x *Sentinel) MasterAddr() (string, error) {
	var last error
	for _, s := range x.Sentinels {
		c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr(), DialTimeout: time.Second, ReadTimeout: time.Second})
		addr, err := c.GetMasterAddrByName(context.Background(), x.Master).Result()
		_ = c.Close()
		if err == nil && len(addr) == 2 {
			return addr[0] + ":" + addr[1], nil
		}
		last = err
	}
	return "", fmt.Errorf("no sentinel names the master of %s: %v", x.Master, last)
}

// waitReplicas waits until every sentinel sees n replicas of the master.
func (x *Sentinel) waitReplicas(n int, timeout time.Duration) {
	x.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok := true
		for _, s := range x.Sentinels {
			c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr(), DialTimeout: time.Second, ReadTimeout: time.Second})
			reps, err := c.Replicas(context.Background(), x.Master).Result()
			_ = c.Close()
			if err != nil || len(reps) < n {
				ok = false
				break
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			x.t.Fatalf("e2e: the sentinels do not see %d replica(s) of %s after %s", n, x.Master, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
