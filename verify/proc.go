package verify

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// worker is one `millrace run` subprocess on the scratch config. Its
// output goes to a log file in the scratch directory; its HTTP address
// comes from --addr-file (http.addr has port 0).
type worker struct {
	name, bin, config, dir string
	env                    []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	addr string
}

func (w *worker) logPath() string  { return filepath.Join(w.dir, w.name+".log") }
func (w *worker) addrPath() string { return filepath.Join(w.dir, w.name+".addr") }

// Start starts the process; Ready waits for it to serve.
func (w *worker) Start() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	_ = os.Remove(w.addrPath())
	log, err := os.OpenFile(w.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(w.bin, "run", "-c", w.config, "--role", "all", "--addr-file", w.addrPath())
	cmd.Env = w.env
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return fmt.Errorf("start %s: %w", w.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = log.Close()
		close(done)
	}()
	w.cmd, w.done, w.addr = cmd, done, ""
	return nil
}

// Ready waits until the process answers 200 on /readyz.
func (w *worker) Ready(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	w.mu.Lock()
	done := w.done
	w.mu.Unlock()
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		if addr := w.Addr(); addr != "" {
			resp, err := client.Get("http://" + addr + "/readyz")
			if err == nil {
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
			}
		}
		select {
		case <-done:
			return fmt.Errorf("%s exited before it was ready: %s", w.name, w.Tail(15))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready within %s: %s", w.name, timeout, w.Tail(15))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Addr is the process's HTTP address, once it listens.
func (w *worker) Addr() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.addr == "" {
		if b, err := os.ReadFile(w.addrPath()); err == nil {
			w.addr = strings.TrimSpace(string(b))
		}
	}
	return w.addr
}

// Kill ends the process with SIGKILL and waits for it to be gone.
func (w *worker) Kill() {
	w.signal(syscall.SIGKILL, time.Minute)
}

// Stop ends the process with SIGTERM, then SIGKILL after wait.
func (w *worker) Stop(wait time.Duration) {
	if !w.signal(syscall.SIGTERM, wait) {
		w.Kill()
	}
}

// signal sends sig and reports whether the process was gone within wait.
func (w *worker) signal(sig syscall.Signal, wait time.Duration) bool {
	w.mu.Lock()
	cmd, done := w.cmd, w.done
	w.mu.Unlock()
	if cmd == nil {
		return true
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
		return true
	case <-time.After(wait):
		return false
	}
}

// Tail returns the last n lines of the process's log.
func (w *worker) Tail(n int) string {
	b, _ := os.ReadFile(w.logPath())
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "last lines of " + w.name + "'s log:\n" + string(bytes.Join(lines, []byte("\n")))
}
