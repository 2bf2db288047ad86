package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/actiontest"
	"github.com/millrace/millrace/internal/testenv"
)

// lines collects a process's output lines and lets a test wait for one.
type lines struct {
	mu   sync.Mutex
	all  []string
	more chan struct{}
}

func collect(r io.Reader) *lines {
	l := &lines{more: make(chan struct{}, 1)}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			l.mu.Lock()
			l.all = append(l.all, sc.Text())
			l.mu.Unlock()
			select {
			case l.more <- struct{}{}:
			default:
			}
		}
	}()
	return l
}

// wait returns the first line for which match holds, or fails after d.
func (l *lines) wait(t *testing.T, d time.Duration, what string, match func(string) bool) string {
	t.Helper()
	deadline := time.After(d)
	for {
		l.mu.Lock()
		for _, s := range l.all {
			if match(s) {
				l.mu.Unlock()
				return s
			}
		}
		l.mu.Unlock()
		select {
		case <-l.more:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no %s within %s; output:\n%s", what, d, l.String())
		}
	}
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.all, "\n")
}

// TestBinary builds the example, runs it with millrace.toml, sends an
// event over HTTP and expects the shout action's log line, then a clean
// exit on SIGTERM.
func TestBinary(t *testing.T) {
	start := time.Now()
	dir := t.TempDir()
	bin := filepath.Join(dir, "custom-action")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built in %s", time.Since(start).Round(time.Millisecond))

	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cmd := exec.Command(bin, "run", "-c", "millrace.toml", "--log-format", "json")
	cmd.Env = append(os.Environ(), "MILLRACE_HTTP__ADDR="+addr, "MILLRACE_EMBEDDED__DATA_DIR="+filepath.Join(dir, "data"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out := collect(stderr)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	start = time.Now()
	waitReady(t, "http://"+addr+"/readyz", exited, out)
	t.Logf("ready in %s", time.Since(start).Round(time.Millisecond))

	const id = "7d4c9a7e-1f2b-4c3d-9e8f-0a1b2c3d4e5f"
	body := fmt.Sprintf(`{"id":%q,"event_type":"INSERT","entity_type":"Order","entity_id":"42","data":{"total":10}}`, id)
	resp, err := http.Post("http://"+addr+"/v1/events", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST /v1/events: %v", err)
	}
	answer, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("POST /v1/events: %s %s", resp.Status, answer)
	}

	out.wait(t, 10*time.Second, `"SHOUT ORDER 42 CREATED!" log line`, func(s string) bool {
		var rec struct {
			Msg     string `json:"msg"`
			EventID string `json:"event_id"`
		}
		return json.Unmarshal([]byte(s), &rec) == nil && rec.Msg == "SHOUT ORDER 42 CREATED!" && rec.EventID == id
	})

	t.Logf("action ran %s after ready", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("after SIGTERM the process exited with %v, want 0; output:\n%s", err, out)
		}
		t.Logf("exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		t.Fatalf("the process did not exit within 30s of SIGTERM; output:\n%s", out)
	}
}

func waitReady(t *testing.T, url string, exited <-chan error, out *lines) {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("the process exited before it was ready: %v; output:\n%s", err, out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s did not answer 200 within 30s (last error %v); output:\n%s", url, err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestShout runs the action in process, through a registry, as the
// binary does.
func TestShout(t *testing.T) {
	reg := handlers.NewRegistry()
	handlers.MustRegister(reg, "shout", New)
	var buf bytes.Buffer
	a := actiontest.Build(t, actiontest.Case{
		Registry: reg,
		Config:   config.Action{"type": "shout", "message": "{{.entity_type}} {{.data.total}}"},
		Deps:     handlers.Deps{Logger: slog.New(slog.NewTextHandler(&buf, nil))},
	})
	ev := &event.Event{ID: "7d4c9a7e-1f2b-4c3d-9e8f-0a1b2c3d4e5f", Type: event.Insert, Entity: "Order", EntityID: "1", Data: map[string]any{"total": 9.5}}
	if err := a.Execute(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "SHOUT ORDER 9.5!") {
		t.Errorf("log = %q, want it to hold SHOUT ORDER 9.5!", buf.String())
	}

	_, err := reg.Decode("observers.o.actions[0]", config.Action{"type": "shout", "message": "{{.entity_type"})
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Path != "observers.o.actions[0].message" {
		t.Errorf("Decode of a bad template = %v, want an error at observers.o.actions[0].message", err)
	}

	// A message that cannot be rendered for an event will not render on
	// a retry either.
	bad := actiontest.Build(t, actiontest.Case{Registry: reg, Config: config.Action{"type": "shout", "message": "{{index .data.items 3}}"}})
	ev.Data["items"] = []any{"only one"}
	actiontest.ExpectPermanent(t, bad.Execute(context.Background(), ev))
}

// TestShoutConforms runs the checks every action must pass: it builds,
// and Execute on a cancelled context returns at once without a permanent
// error.
func TestShoutConforms(t *testing.T) {
	reg := handlers.NewRegistry()
	handlers.MustRegister(reg, "shout", New)
	actiontest.Check(t, actiontest.Case{Registry: reg, Config: config.Action{"type": "shout"}})
}
