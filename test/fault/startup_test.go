package fault_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/internal/e2e"
	"github.com/millrace/millrace/internal/testenv"
)

// dependency is a service a topology's example config needs outside the
// process.
type dependency struct {
	name string
	// addr is the shared server's address, as in its testenv URL.
	addr string
	// key is the config key that millrace must name when the service
	// does not answer.
	key string
}

// dependencies returns what each topology's example config connects to,
// in the order of its checks. A topology that millrace registers and
// that is missing here fails the tests, so that none goes untested.
func dependencies(t *testing.T) map[string][]dependency {
	t.Helper()
	host := func(raw string) string {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		return u.Host
	}
	pg := dependency{"postgres", host(testenv.PostgresURL()), "sources[0].postgres_url_env=ORDERS_DB_URL"}
	rd := dependency{"redis", host(testenv.RedisURL()), "redis.url"}
	nt := dependency{"nats", host(testenv.NATSURL()), "nats.url"}
	deps := map[string][]dependency{
		"embedded": nil, // its bus runs inside the process
		"postgres": {pg},
		"redis":    {rd, pg},
		"nats":     {nt, rd, pg},
		"multidb":  {nt, rd, pg},
	}
	for _, topology := range e2e.Topologies() {
		if _, ok := deps[topology]; !ok {
			t.Fatalf("topology %q: its dependencies are not listed in test/fault/startup_test.go", topology)
		}
	}
	return deps
}

// TestServiceUnreachableAtStartup starts each topology with one of its
// services unreachable (port 1) and router.startup_timeout = 2s:
// millrace waits, then exits with status 2 and a message naming the
// config key and the address. It does not panic.
func TestServiceUnreachableAtStartup(t *testing.T) {
	for topology, deps := range dependencies(t) {
		for _, dep := range deps {
			t.Run(topology+"/"+dep.name, func(t *testing.T) {
				t.Parallel()
				const unreachable = "127.0.0.1:1"
				r := e2e.NewRig(t, topology, e2e.Options{
					Reroute: map[string]string{dep.addr: unreachable},
					Env:     []string{"MILLRACE_ROUTER__STARTUP_TIMEOUT=2s"},
				})
				start := time.Now()
				r.Proc.Start()
				code := r.Proc.Wait(60 * time.Second)
				took := time.Since(start)
				if code != 2 {
					t.Errorf("exit status %d, want 2", code)
				}
				if took < 2*time.Second {
					t.Errorf("exited after %s, before router.startup_timeout (2s)", took.Round(time.Millisecond))
				}
				var final string
				for _, l := range r.Proc.Logs() {
					if strings.Contains(l.Raw, "panic") {
						t.Errorf("millrace panicked: %s", l.Raw)
					}
					if l.Level == "ERROR" {
						final, _ = l.Attrs["err"].(string)
					}
				}
				for _, want := range []string{dep.name + ": connect", dep.key, unreachable, "router.startup_timeout"} {
					if !strings.Contains(final, want) {
						t.Errorf("the error does not name %q: %q", want, final)
					}
				}
				attempts := r.Proc.CountLogs(func(l e2e.LogLine) bool { return l.Msg == "waiting for a service" })
				if attempts < 2 {
					t.Errorf("%d failed attempts logged, want at least 2 (retries with backoff)", attempts)
				}
				t.Logf("startup %s without %s: exit %d after %s, %d attempts: %s",
					topology, dep.name, code, took.Round(100*time.Millisecond), attempts, final)
			})
		}
	}
}

// TestServiceStartsLater starts each topology with one of its services
// coming up 5 s after millrace (a proxy in front of the shared server
// that listens only then): meanwhile /healthz answers 200 and /readyz
// 503 naming the service; then millrace becomes ready without a restart
// and delivers. Then the service goes away while millrace runs: /readyz
// names it, the loss and the return are logged, and once it is back the
// changes made meanwhile are delivered.
func TestServiceStartsLater(t *testing.T) {
	for topology, deps := range dependencies(t) {
		for _, dep := range deps {
			t.Run(topology+"/"+dep.name, func(t *testing.T) {
				t.Parallel()
				proxy := e2e.NewProxy(t, dep.addr)
				recv := e2e.NewReceiver(t)
				r := e2e.NewRig(t, topology, e2e.Options{
					Receiver: recv, Observers: observeAll(recv),
					Reroute: map[string]string{dep.addr: proxy.Addr()},
					Env:     []string{"MILLRACE_ROUTER__STARTUP_TIMEOUT=60s"},
				})
				started := time.Now()
				r.Proc.Start()
				opened := make(chan struct{})
				time.AfterFunc(5*time.Second, func() {
					proxy.Open()
					close(opened)
				})

				// While it waits.
				if code, body := get(t, r.Proc, r.URL("/healthz"), 4*time.Second); code != http.StatusOK {
					t.Fatalf("/healthz while waiting: %d %s, want 200", code, body)
				}
				// The reason is there once the first attempt failed.
				waitReadyz(t, r, 4*time.Second, "naming "+dep.key+" and "+proxy.Addr(), func(code int, reason string) bool {
					return code == http.StatusServiceUnavailable && strings.Contains(reason, dep.key) && strings.Contains(reason, proxy.Addr())
				})

				<-opened
				r.Proc.WaitReady(r.URL("/readyz"), 60*time.Second)
				readyAfter := time.Since(started)
				if n := r.Proc.Starts(); n != 1 {
					t.Fatalf("millrace was started %d times, want 1", n)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				deliver := func(ids []int) {
					t.Helper()
					if err := r.Insert(ctx, ids, "new"); err != nil {
						t.Fatal(err)
					}
					n := len(r.Produced())
					recv.Wait(t, time.Minute, "the changes delivered", func() bool {
						return e2e.Count(r.Produced(), recv.Requests("all")).Delivered == n
					})
				}
				deliver(e2e.Range(1, 3)) // one per source with two sources
				attempts := r.Proc.CountLogs(func(l e2e.LogLine) bool { return l.Msg == "waiting for a service" })
				if attempts == 0 {
					t.Error("no failed attempt was logged while the service was away")
				}

				// Lost while running, where /readyz watches the service:
				// on nats and multidb, Redis holds only the stores, which
				// fail open (TestRedisDown).
				lost := dep.name != "redis" || topology == "redis"
				if lost {
					proxy.Close()
					waitReadyz(t, r, 10*time.Second, "naming "+dep.key, func(code int, reason string) bool {
						return code == http.StatusServiceUnavailable && strings.Contains(reason, dep.key)
					})
					// A change made while the service is away.
					deliverLater := make(chan error, 1)
					go func() { deliverLater <- r.Insert(ctx, e2e.Range(3, 5), "new") }()
					time.Sleep(3 * time.Second) // longer than the router's probe interval
					proxy.Open()
					r.Proc.WaitReady(r.URL("/readyz"), 60*time.Second)
					if err := <-deliverLater; err != nil {
						t.Fatal(err)
					}
					n := len(r.Produced())
					recv.Wait(t, time.Minute, "the changes made while the service was away delivered", func() bool {
						return e2e.Count(r.Produced(), recv.Requests("all")).Delivered == n
					})
					recv.Wait(t, 10*time.Second, "the loss and the return of the service logged", func() bool {
						return r.Proc.CountLogs(func(l e2e.LogLine) bool { return l.Msg == "a service does not answer; waiting for it to come back" }) > 0 &&
							r.Proc.CountLogs(func(l e2e.LogLine) bool { return l.Msg == "service answers again" }) > 0
					})
				}
				if p := e2e.Count(r.Produced(), recv.Requests("all")).Problems(); p != "" {
					t.Error(p)
				}
				if code := r.Proc.Terminate(e2e.ShutdownWait()); code != 0 {
					t.Errorf("exit status %d after SIGTERM, want 0", code)
				}
				t.Logf("startup %s with %s 5s late: %d attempts logged, ready after %s; lost and back while running: %v; %d changes delivered",
					topology, dep.name, attempts, readyAfter.Round(100*time.Millisecond), lost, len(r.Produced()))
			})
		}
	}
}

// waitReadyz polls /readyz until ok(status, reason) holds, up to within.
func waitReadyz(t *testing.T, r *e2e.Rig, within time.Duration, what string, ok func(code int, reason string) bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		code, body := get(t, r.Proc, r.URL("/readyz"), time.Second)
		var ready struct{ Reason string }
		_ = json.Unmarshal([]byte(body), &ready)
		if ok(code, ready.Reason) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz: %d %s; want 503 %s", code, body, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// get polls url until the process answers, up to within, and returns
// the status and body of the first answer.
func get(t *testing.T, p *e2e.Process, url string, within time.Duration) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 3 * time.Second}
	deadline := time.Now().Add(within)
	for {
		resp, err := client.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			return resp.StatusCode, strings.TrimSpace(string(b))
		}
		if !p.Running() || time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
