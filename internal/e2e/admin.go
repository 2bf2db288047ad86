package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/stores"
)

// DeadLetter is an entry of the dead-letter store as the admin API
// shows it: lists leave the payload out and give its size.
type DeadLetter = stores.DeadLetter

func (r *Rig) admin(ctx context.Context, method, path string, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, r.URL(path), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+r.AdminToken)
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, fmt.Errorf("%s %s: %s %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// DeadLetters lists the dead-letter store through the admin API
// (GET /v1/dlq), oldest first, without payloads.
func (r *Rig) DeadLetters(t testing.TB) []DeadLetter {
	t.Helper()
	var out struct {
		Entries []DeadLetter `json:"entries"`
	}
	if _, err := r.admin(context.Background(), http.MethodGet, "/v1/dlq?limit=10000", &out); err != nil {
		t.Fatalf("e2e: %v", err)
	}
	return out.Entries
}

// DeadLetter shows one entry with its payload (GET /v1/dlq/{id}).
func (r *Rig) DeadLetter(t testing.TB, id string) DeadLetter {
	t.Helper()
	var out DeadLetter
	if _, err := r.admin(context.Background(), http.MethodGet, "/v1/dlq/"+id, &out); err != nil {
		t.Fatalf("e2e: %v", err)
	}
	return out
}

// WaitDeadLetters polls the admin API until cond holds for the entries.
func (r *Rig) WaitDeadLetters(t testing.TB, timeout time.Duration, what string, cond func([]DeadLetter) bool) []DeadLetter {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		dls := r.DeadLetters(t)
		if cond(dls) {
			return dls
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, d := range dls {
				fmt.Fprintf(&b, "\n\t%s observer=%q reason=%s attempts=%d error=%q", d.ID, d.Observer, d.Reason, d.Attempts, d.Error)
			}
			t.Fatalf("e2e: %s: not within %s; dead letters:%s", what, timeout, b.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// CLI runs the millrace binary with args against the rig's process
// (--addr, and the admin token through its variable) and returns its
// exit code and output.
func (r *Rig) CLI(t testing.TB, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	args = append(args, "--addr", r.Addr, "--token-env", r.AdminTokenEnv)
	cmd := exec.Command(Binary(t), args...)
	cmd.Env = r.Env
	return RunCommand(t, cmd)
}

// RunCommand runs cmd to its end and returns its exit code and output;
// a command that could not run at all fails the test.
func RunCommand(t testing.TB, cmd *exec.Cmd) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("e2e: %s: %v", strings.Join(cmd.Args, " "), err)
	}
	return code, out.String(), errOut.String()
}

// Metric returns the sum of a Prometheus counter or gauge over all its
// label sets, read from /metrics; 0 when it is absent.
func (r *Rig) Metric(t testing.TB, name string) float64 {
	t.Helper()
	return MetricAt(t, r.Addr, name)
}

// MetricAt is Rig.Metric for the millrace process at addr (host:port).
func MetricAt(t testing.TB, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("e2e: metrics: %v", err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}
