package router

import (
	"context"
	"io"
	"math"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/millrace/millrace/router/console"
	"github.com/millrace/millrace/stores"
)

const consoleToken = "console-s3cret-token"

// consoleRouter runs a router with the console on and an observer whose
// webhook goes to a receiver that fails (400, permanent) until told
// otherwise.
func consoleRouter(t *testing.T) (*Router, string, *hookCounter) {
	t.Helper()
	hook, hookURL := newHookCounter(t, true)
	r, addr, _ := dlqTestRouterEnv(t, adminTokenEnv(t, consoleToken), `
[observers.orders]
entity = "Order"
retry = { max_attempts = 1 }
[[observers.orders.actions]]
type = "webhook"
url = "`+hookURL+`/hook"
allow_private = true
`, []string{"MILLRACE_HTTP__CONSOLE=true"})
	return r, addr, hook
}

// call sends a request with an optional bearer token and cookie jar
// client, without following redirects.
func call(t *testing.T, c *http.Client, method, u, token string, form url.Values) (int, http.Header, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if c == nil {
		c = &http.Client{}
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// Every console route and every admin API route answers 401 without
// credentials and with a wrong token; the login page and the static
// assets are the only open ones. Console pages carry a CSP without
// 'unsafe-inline' and never the token.
func TestConsoleRoutesRefuseStrangers(t *testing.T) {
	_, addr, _ := consoleRouter(t)
	routes := append(console.Routes(),
		"GET /v1/dlq", "GET /v1/dlq/x", "POST /v1/dlq/replay", "DELETE /v1/dlq/x", "DELETE /v1/dlq")
	for _, rt := range routes {
		method, path, _ := strings.Cut(rt, " ")
		for _, token := range []string{"", "wrong-token", consoleToken + "x"} {
			code, h, body := call(t, nil, method, addr+path, token, nil)
			if code != http.StatusUnauthorized {
				t.Errorf("%s %s with token %q = %d; want 401", method, path, token, code)
			}
			if strings.Contains(body, consoleToken) {
				t.Errorf("%s %s: the answer holds the admin token", method, path)
			}
			if strings.HasPrefix(path, console.Prefix) && !strings.Contains(h.Get("Content-Security-Policy"), "script-src 'self'") {
				t.Errorf("%s %s: CSP %q", method, path, h.Get("Content-Security-Policy"))
			}
		}
	}
	for _, path := range []string{"/console/login", "/console/static/console.js", "/console/static/console.css"} {
		if code, _, _ := call(t, nil, http.MethodGet, addr+path, "", nil); code != http.StatusOK {
			t.Errorf("GET %s without a token = %d; want 200 (open)", path, code)
		}
	}
	// With the token each page answers 200, with the CSP.
	for _, path := range []string{"/console/observers", "/console/deadletters", "/console/deliveries", "/console/config", "/console/bus", "/console/bus?partial=1"} {
		code, h, body := call(t, nil, http.MethodGet, addr+path, consoleToken, nil)
		if code != http.StatusOK {
			t.Errorf("GET %s with the token = %d; want 200: %.300s", path, code, body)
		}
		csp := h.Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'none'") || strings.Contains(csp, "unsafe-inline") {
			t.Errorf("GET %s: CSP %q", path, csp)
		}
		if strings.Contains(body, "<script>") || strings.Contains(body, " on") && strings.Contains(body, "onclick=") {
			t.Errorf("GET %s: inline script", path)
		}
		if strings.Contains(body, consoleToken) {
			t.Errorf("GET %s: the page holds the admin token", path)
		}
	}
}

// The login form sets an HttpOnly, SameSite=Strict session cookie (not
// the token) that opens the console; a wrong token gets 401 and no
// cookie; logout ends the session; a POST from another origin is
// refused.
func TestConsoleLogin(t *testing.T) {
	_, addr, _ := consoleRouter(t)
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	if code, h, _ := call(t, c, http.MethodPost, addr+"/console/login", "", url.Values{"token": {"wrong"}}); code != http.StatusUnauthorized || h.Get("Set-Cookie") != "" {
		t.Fatalf("login with a wrong token = %d, Set-Cookie %q; want 401 and none", code, h.Get("Set-Cookie"))
	}
	code, h, _ := call(t, c, http.MethodPost, addr+"/console/login", "", url.Values{"token": {consoleToken}})
	if code != http.StatusSeeOther {
		t.Fatalf("login = %d; want 303", code)
	}
	ck := h.Get("Set-Cookie")
	for _, want := range []string{"millrace_console=", "HttpOnly", "SameSite=Strict", "Path=/console/"} {
		if !strings.Contains(ck, want) {
			t.Errorf("Set-Cookie %q lacks %s", ck, want)
		}
	}
	if strings.Contains(ck, consoleToken) {
		t.Error("the cookie holds the admin token")
	}
	if code, _, body := call(t, c, http.MethodGet, addr+"/console/observers", "", nil); code != http.StatusOK || !strings.Contains(body, "orders") {
		t.Fatalf("observers with the session = %d; want 200 listing the observer: %.300s", code, body)
	}
	// The cookie does not open the JSON API.
	if code, _, _ := call(t, c, http.MethodGet, addr+"/v1/dlq", "", nil); code != http.StatusUnauthorized {
		t.Errorf("GET /v1/dlq with the console cookie = %d; want 401", code)
	}
	req, _ := http.NewRequest(http.MethodPost, addr+"/console/deadletters/action", strings.NewReader("op=replay-matching"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "http://evil.example")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-origin POST with the session = %d; want 403", resp.StatusCode)
	}
	if code, _, _ := call(t, c, http.MethodPost, addr+"/console/logout", "", url.Values{}); code != http.StatusSeeOther {
		t.Fatalf("logout = %d; want 303", code)
	}
	if code, _, _ := call(t, c, http.MethodGet, addr+"/console/observers", "", nil); code != http.StatusUnauthorized {
		t.Errorf("observers after logout = %d; want 401", code)
	}
}

// A failing webhook's dead letter shows on the console with its error;
// the filter by error class finds it; a purge asks for confirmation
// first; a replay from the console delivers it once the receiver
// accepts; the observers and recent deliveries pages count it.
func TestConsoleDeadLetterFlow(t *testing.T) {
	r, addr, hook := consoleRouter(t)
	ev, _ := testEvent(t, "Order")
	if err := r.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	var dl stores.DeadLetter
	deadline := time.Now().Add(20 * time.Second)
	for {
		list, err := r.deadLetterStore().List(context.Background(), stores.DeadLetterFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 1 {
			dl = list[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no dead letter after 20s (%d)", len(list))
		}
		time.Sleep(50 * time.Millisecond)
	}
	get := func(path string) string {
		t.Helper()
		code, _, body := call(t, nil, http.MethodGet, addr+path, consoleToken, nil)
		if code != http.StatusOK {
			t.Fatalf("GET %s = %d: %.300s", path, code, body)
		}
		return body
	}
	// Entry ids may be short (a stream sequence): look for the link.
	link := `href="/console/deadletters/` + dl.ID + `"`
	if body := get("/console/deadletters?error=400"); !strings.Contains(body, link) || !strings.Contains(body, `id="matching">1<`) {
		t.Errorf("the filter error=400 does not list the entry: %.2000s", body)
	}
	if body := get("/console/deadletters?error=timeout"); strings.Contains(body, link) {
		t.Errorf("the filter error=timeout lists an entry that failed with a 400: %s", dl.Error)
	}
	if body := get("/console/deadletters/" + dl.ID); !strings.Contains(body, ev.ID) || !strings.Contains(body, "400") {
		t.Errorf("the entry's page lacks the event or the error: %.2000s", body)
	}
	if body := get("/console/observers"); !strings.Contains(body, "breakers") || !strings.Contains(body, "p99") {
		t.Errorf("observers page: %.2000s", body)
	}
	if body := get("/console/bus"); !strings.Contains(body, "<tr><td><code>millrace_events</code></td><td class=\"n\">0</td>") || !strings.Contains(body, `<span class="state closed">ready</span>`) {
		t.Errorf("bus health does not show the embedded consumer ready: %.3000s", body)
	}
	if body := get("/console/deliveries"); !strings.Contains(body, "dead_lettered") {
		t.Errorf("recent deliveries do not show the dead-lettered delivery: %.2000s", body)
	}
	// A purge without confirm only asks.
	code, _, body := call(t, nil, http.MethodPost, addr+"/console/deadletters/action", consoleToken,
		url.Values{"op": {"purge-matching"}})
	if code != http.StatusOK || !strings.Contains(body, `name="confirm" value="yes"`) {
		t.Fatalf("purge without confirm = %d: %.1000s", code, body)
	}
	if n, _ := r.deadLetterStore().Count(context.Background()); n != 1 {
		t.Fatalf("a purge that was not confirmed removed entries: %d left", n)
	}
	hook.failing.Store(false)
	before := hook.total()
	code, _, body = call(t, nil, http.MethodPost, addr+"/console/deadletters/action", consoleToken,
		url.Values{"op": {"replay-selected"}, "id": {dl.ID}})
	if code != http.StatusOK || !strings.Contains(body, "Replayed 1 of 1") {
		t.Fatalf("replay = %d: %.1000s", code, body)
	}
	for deadline := time.Now().Add(20 * time.Second); hook.total() == before; {
		if time.Now().After(deadline) {
			t.Fatal("the replayed event did not reach the receiver")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n, _ := r.deadLetterStore().Count(context.Background()); n != 0 {
		t.Errorf("%d entries left after the replay; want 0", n)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(get("/console/deliveries?partial=1"), "succeeded"); {
		if time.Now().After(deadline) {
			t.Fatal("recent deliveries do not show the replay's success")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The purge of all matching entries, confirmed, empties the selection
// and leaves the rest.
func TestConsolePurgeConfirmed(t *testing.T) {
	r, addr, _ := consoleRouter(t)
	ctx := context.Background()
	store := func() stores.DeadLetters {
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if s := r.deadLetterStore(); s != nil {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatal("no dead-letter store")
			}
		}
	}()
	now := time.Now()
	for _, o := range []string{"a", "a", "b"} {
		if _, err := store.Put(ctx, stores.DeadLetter{Observer: o, Reason: stores.ReasonPermanent, Error: "boom",
			Attempts: 1, FirstFailure: now, LastFailure: now, Payload: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
	}
	code, _, body := call(t, nil, http.MethodPost, addr+"/console/deadletters/action", consoleToken,
		url.Values{"op": {"purge-matching"}, "observer": {"a"}, "confirm": {"yes"}})
	if code != http.StatusOK || !strings.Contains(body, "Purged 2") {
		t.Fatalf("purge = %d: %.1000s", code, body)
	}
	left, err := store.List(ctx, stores.DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].Observer != "b" {
		t.Errorf("left after purging observer a: %+v; want b's entry only", left)
	}
}

// quantile follows histogram_quantile: linear inside the bucket.
func TestQuantile(t *testing.T) {
	h := &dto.Histogram{SampleCount: proto.Uint64(100), Bucket: []*dto.Bucket{
		{UpperBound: proto.Float64(0.1), CumulativeCount: proto.Uint64(50)},
		{UpperBound: proto.Float64(0.2), CumulativeCount: proto.Uint64(90)},
		{UpperBound: proto.Float64(0.4), CumulativeCount: proto.Uint64(100)},
	}}
	if got := quantile(0.99, h); math.Abs(got-0.38) > 1e-9 {
		t.Errorf("p99 = %v; want 0.38", got)
	}
	if got := quantile(0.5, h); math.Abs(got-0.1) > 1e-9 {
		t.Errorf("p50 = %v; want 0.1", got)
	}
	if got := quantile(0.99, &dto.Histogram{}); !math.IsNaN(got) {
		t.Errorf("p99 of nothing = %v; want NaN", got)
	}
}

// The ring keeps the last recentPerObserver deliveries, newest first.
func TestRecentDeliveriesRing(t *testing.T) {
	rd := newRecentDeliveries()
	for i := range recentPerObserver + 7 {
		rd.add(console.Delivery{Observer: "o", EventID: string(rune('A' + i%26)), Attempts: i})
	}
	got := rd.snapshot()["o"]
	if len(got) != recentPerObserver {
		t.Fatalf("%d kept; want %d", len(got), recentPerObserver)
	}
	if got[0].Attempts != recentPerObserver+6 || got[len(got)-1].Attempts != 7 {
		t.Errorf("order: first %d, last %d; want %d and 7", got[0].Attempts, got[len(got)-1].Attempts, recentPerObserver+6)
	}
}
