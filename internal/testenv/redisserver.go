package testenv

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// startTimeout bounds how long [RedisServer.Start] waits for the server.
const startTimeout = 10 * time.Second

// RedisServer is a private redis-server process on 127.0.0.1, for tests that
// must stop and restart Redis. It keeps nothing on disk: data is lost when
// it stops. Its methods are safe for concurrent use, but Start may fail the
// test and must be called from the test's goroutine.
type RedisServer struct {
	t    testing.TB
	bin  string
	port int
	dir  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// StartRedis starts a redis-server on a free 127.0.0.1 port, without
// persistence, and waits until it answers. The server is killed when the
// test ends. The test fails when redis-server is not installed
// (test/services.sh installs it) or does not start.
func StartRedis(t testing.TB) *RedisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testenv: redis-server is not installed (%v);"+
			" `make test` runs test/services.sh, which installs it", err)
	}
	s := &RedisServer{t: t, bin: bin, port: FreePort(t), dir: t.TempDir()}
	t.Cleanup(s.Stop)
	s.Start()
	return s
}

// Addr returns the server's address, 127.0.0.1:port.
func (s *RedisServer) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// URL returns the server's URL, redis://127.0.0.1:port/0. It stays the same
// across Stop and Start.
func (s *RedisServer) URL() string { return "redis://" + s.Addr() + "/0" }

// Stop kills the server (SIGKILL, as in a crash) and waits for it to exit.
// Stopping a stopped server does nothing.
func (s *RedisServer) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill() // fails only when it has already exited
	<-s.done
	s.cmd, s.done = nil, nil
}

// Start starts the server again on the same port and waits until it
// answers. Starting a running server does nothing.
func (s *RedisServer) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	logPath := filepath.Join(s.dir, "redis.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatalf("testenv: cannot create the redis-server log: %v", err)
	}
	defer func() { _ = logFile.Close() }() // the child has its own copy
	cmd := exec.Command(s.bin,
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(s.port),
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--dir", s.dir,
		"--logfile", "", // stdout, i.e. redis.log
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("testenv: cannot start %s: %v", s.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.cmd, s.done = cmd, done

	if err := waitRedis(s.Addr(), done); err != nil {
		_ = cmd.Process.Kill()
		<-done
		s.cmd, s.done = nil, nil
		out, _ := os.ReadFile(logPath)
		s.t.Fatalf("testenv: redis-server on %s did not start: %v\n%s", s.Addr(), err, out)
	}
}

// waitRedis waits until the server at addr answers PING, it exits, or
// startTimeout passes. It speaks RESP over a plain connection rather than
// through go-redis, whose pool logs every refused dial.
func waitRedis(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := ping(addr)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("the process exited: last error %w", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer within %s: %w", startTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping sends PING to the Redis server at addr and checks that it answers
// PONG.
func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	if err := conn.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if reply != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(reply))
	}
	return nil
}
