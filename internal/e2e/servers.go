package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

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
	bin := NATSServerBin
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("nats-server"); err != nil {
			t.Fatalf("e2e: nats-server is not installed (%v); test/services.sh installs it", err)
		}
	}
	s := &Server{t: t, name: "nats-server", port: testenv.FreePort(t), dir: t.TempDir()}
	s.args = []string{bin, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(s.port), "-sd", s.dir}
	t.Cleanup(func() { s.Stop(syscall.SIGKILL) })
	s.Start()
	return s
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
