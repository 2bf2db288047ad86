package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// maxLogLines bounds the log lines a Process keeps.
const maxLogLines = 200_000

// LogLine is one JSON log line of a millrace process.
type LogLine struct {
	// Start counts the starts of the process: 1 for the first run.
	Start int
	// Level and Msg are the slog level and message.
	Level, Msg string
	// Attrs holds every field of the line.
	Attrs map[string]any
	// Raw is the line as written.
	Raw string
}

// Process is a millrace process that a test can stop, kill and start
// again with the same arguments and environment.
type Process struct {
	t    testing.TB
	name string
	bin  string
	args []string
	env  []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	state  error // Wait's result once done is closed
	starts int
	logs   []LogLine
}

// NewProcess prepares a process; Start runs it. The process is killed
// when the test ends, and its last log lines are shown if the test
// failed.
func NewProcess(t testing.TB, name, bin string, args, env []string) *Process {
	p := &Process{t: t, name: name, bin: bin, args: args, env: env}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			p.dumpLogs(60)
		}
	})
	return p
}

// Start runs the process. Starting a running process fails the test.
func (p *Process) Start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		p.t.Fatalf("e2e: %s is already running", p.name)
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = p.env
	killWithParent(cmd)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		p.t.Fatalf("e2e: %s: %v", p.name, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		p.t.Fatalf("e2e: %s: %v", p.name, err)
	}
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("e2e: start %s: %v", p.name, err)
	}
	p.starts++
	start := p.starts
	var readers sync.WaitGroup
	readers.Go(func() { p.read(stderr, start) })
	readers.Go(func() { p.read(stdout, start) })
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		// The pipes are read to their end before Wait closes them.
		readers.Wait()
		err := cmd.Wait()
		p.mu.Lock()
		p.state = err
		p.mu.Unlock()
		close(done)
	}()
}

func (p *Process) read(r io.Reader, start int) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		raw := sc.Text()
		l := LogLine{Start: start, Raw: raw}
		if json.Unmarshal([]byte(raw), &l.Attrs) == nil {
			l.Level, _ = l.Attrs["level"].(string)
			l.Msg, _ = l.Attrs["msg"].(string)
		}
		p.mu.Lock()
		if len(p.logs) < maxLogLines {
			p.logs = append(p.logs, l)
		}
		p.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r)
}

// Starts returns how many times the process was started.
func (p *Process) Starts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

// Running reports whether the process runs.
func (p *Process) Running() bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Signal sends sig to the running process.
func (p *Process) Signal(sig syscall.Signal) {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(sig)
	}
}

// Wait waits up to timeout for the process to exit and returns its exit
// code (-1 when a signal ended it). It fails the test on timeout.
func (p *Process) Wait(timeout time.Duration) int {
	p.t.Helper()
	p.mu.Lock()
	done, cmd := p.done, p.cmd
	p.mu.Unlock()
	if done == nil {
		p.t.Fatalf("e2e: %s was not started", p.name)
	}
	select {
	case <-done:
	case <-time.After(timeout):
		p.t.Fatalf("e2e: %s did not exit within %s", p.name, timeout)
	}
	p.mu.Lock()
	state := p.state
	if p.cmd == cmd {
		p.cmd, p.done = nil, nil
	}
	p.mu.Unlock()
	var ee *exec.ExitError
	if errors.As(state, &ee) {
		return ee.ExitCode()
	}
	if state != nil {
		return -1
	}
	return 0
}

// Terminate sends SIGTERM and waits up to timeout for the exit; it
// returns the exit code.
func (p *Process) Terminate(timeout time.Duration) int {
	p.t.Helper()
	p.Signal(syscall.SIGTERM)
	return p.Wait(timeout)
}

// Kill sends SIGKILL, as in a crash, and waits for the exit. Killing a
// process that is not running does nothing.
func (p *Process) Kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd, p.done = nil, nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Logs returns the log lines written so far, of every start.
func (p *Process) Logs() []LogLine {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]LogLine(nil), p.logs...)
}

// CountLogs counts the log lines for which match is true.
func (p *Process) CountLogs(match func(LogLine) bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.logs {
		if match(l) {
			n++
		}
	}
	return n
}

// WaitReady polls url (the process's /readyz) until it answers 200. It
// fails the test when the process exits first or timeout passes.
func (p *Process) WaitReady(url string, timeout time.Duration) {
	p.t.Helper()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	var last string
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		if !p.Running() {
			p.t.Fatalf("e2e: %s exited before it was ready (last answer: %s)", p.name, last)
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("e2e: %s not ready within %s (last answer: %s)", p.name, timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *Process) dumpLogs(n int) {
	logs := p.Logs()
	if len(logs) > n {
		logs = logs[len(logs)-n:]
	}
	for _, l := range logs {
		p.t.Logf("%s[%d]: %s", p.name, l.Start, l.Raw)
	}
}

// PID returns the process id of the running process, or 0.
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}
