package webhook_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/actiontest"
	"github.com/millrace/millrace/handlers/webhook"
	"github.com/millrace/millrace/middleware"
)

// The published Standard Webhooks vector, to check that verify (the
// receiver side of these tests) is itself right.
func TestVerifierTestVector(t *testing.T) {
	t.Parallel()
	h := http.Header{}
	h.Set("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek")
	h.Set("webhook-timestamp", "1614265330")
	h.Set("webhook-signature", "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
	body := []byte(`{"test": 2432232314}`)
	now := time.Unix(1614265330, 0)
	if err := verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", h, body, now, 5*time.Minute); err != nil {
		t.Fatalf("verify(test vector) = %v; want nil", err)
	}
	if err := verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", h, []byte(`{"test": 2432232315}`), now, 5*time.Minute); err == nil {
		t.Fatal("verify(altered body) = nil; want an error")
	}
	if err := verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", h, body, now.Add(time.Hour), 5*time.Minute); err == nil {
		t.Fatal("verify(an hour later) = nil; want an error")
	}
}

func TestSignedDelivery(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, secret string }{
		{"whsec", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
		{"raw", "a raw secret, used as its bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rc := newReceiver(t, nil)
			a := build(t, config.Action{
				"type": "webhook", "url": rc.URL + "/hooks/order", "allow_private": true,
				"secret_env": setEnv(t, tc.secret),
			})
			ev := newEvent()
			if err := a.Execute(t.Context(), ev); err != nil {
				t.Fatalf("Execute: %v", err)
			}
			got := rc.only(t)
			if err := verify(tc.secret, got.Header, got.Body, time.Now(), 5*time.Minute); err != nil {
				t.Fatalf("signature: %v", err)
			}
			if err := verify("another secret", got.Header, got.Body, time.Now(), 5*time.Minute); err == nil {
				t.Fatal("signature verifies with another secret")
			}
			if got.Method != http.MethodPost || got.Path != "/hooks/order" {
				t.Errorf("request = %s %s; want POST /hooks/order", got.Method, got.Path)
			}
			if ct := got.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q; want application/json", ct)
			}
			if id, key := got.Header.Get("webhook-id"), got.Header.Get("Idempotency-Key"); id == "" || id != key || !strings.Contains(id, ev.ID) {
				t.Errorf("webhook-id = %q, Idempotency-Key = %q; want the same key, holding the event id %s", id, key, ev.ID)
			}
			// The default body is the envelope.
			back, err := event.Decode(got.Body)
			if err != nil {
				t.Fatalf("body is not an envelope: %v\n%s", err, got.Body)
			}
			if back.ID != ev.ID || back.Entity != "Order" || back.Data["status"] != "shipped" || back.Changes["status"].Old != "paid" {
				t.Errorf("envelope = %+v; want the event sent", back)
			}
		})
	}
}

func TestUnsignedWithoutSecret(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	a := build(t, config.Action{"type": "webhook", "url": rc.URL, "allow_private": true})
	if err := a.Execute(t.Context(), newEvent()); err != nil {
		t.Fatal(err)
	}
	got := rc.only(t)
	if s := got.Header.Get("webhook-signature"); s != "" {
		t.Errorf("webhook-signature = %q; want none without secret_env", s)
	}
	if got.Header.Get("webhook-id") == "" || got.Header.Get("webhook-timestamp") == "" {
		t.Error("webhook-id and webhook-timestamp are missing; they are sent signed or not")
	}
}

func TestKeyStableAcrossRetries(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	secret := "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	raw := config.Action{"type": "webhook", "url": rc.URL, "allow_private": true, "secret_env": setEnv(t, secret)}
	a := build(t, raw)
	ev, other := newEvent(), newEvent()
	for _, e := range []*event.Event{ev, ev, other} {
		if err := a.Execute(t.Context(), e); err != nil {
			t.Fatal(err)
		}
	}
	// The same event through another action (another config): another key.
	raw2 := config.Action{"type": "webhook", "url": rc.URL + "/other", "allow_private": true, "secret_env": raw["secret_env"]}
	if err := build(t, raw2).Execute(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	reqs := rc.requests()
	if len(reqs) != 4 {
		t.Fatalf("got %d requests; want 4", len(reqs))
	}
	keys := make([]string, len(reqs))
	for i, r := range reqs {
		if err := verify(secret, r.Header, r.Body, time.Now(), 5*time.Minute); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		keys[i] = r.Header.Get("webhook-id")
		if k := r.Header.Get("Idempotency-Key"); k != keys[i] {
			t.Errorf("request %d: Idempotency-Key %q != webhook-id %q", i, k, keys[i])
		}
	}
	if keys[0] != keys[1] {
		t.Errorf("retry of one event: keys %q and %q; want equal", keys[0], keys[1])
	}
	if keys[2] == keys[0] {
		t.Errorf("another event: key %q; want a different key", keys[2])
	}
	if keys[3] == keys[0] {
		t.Errorf("another action on the same event: key %q; want a different key", keys[3])
	}
}

func TestStatusClasses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status    int
		permanent bool
		ok        bool
	}{
		{200, false, true}, {201, false, true}, {204, false, true},
		{301, true, false}, {302, true, false},
		{400, true, false}, {401, true, false}, {403, true, false}, {404, true, false}, {410, true, false}, {422, true, false},
		{408, false, false}, {425, false, false}, {429, false, false},
		{500, false, false}, {502, false, false}, {503, false, false}, {504, false, false},
	} {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			t.Parallel()
			rc := newReceiver(t, func(w http.ResponseWriter, _ *http.Request) {
				if tc.status/100 == 3 {
					w.Header().Set("Location", "http://127.0.0.1:1/elsewhere")
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte("receiver says\nno"))
			})
			// The URL holds a token: it must not appear in errors.
			a := build(t, config.Action{"type": "webhook", "url": rc.URL + "/T0K3N?key=s3cr3t", "allow_private": true})
			err := a.Execute(t.Context(), newEvent())
			if tc.ok {
				if err != nil {
					t.Fatalf("status %d: err = %v; want nil", tc.status, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("status %d: err = nil; want an error", tc.status)
			}
			if got := errors.Is(err, handlers.ErrPermanent); got != tc.permanent {
				t.Errorf("status %d: permanent = %v; want %v (err: %v)", tc.status, got, tc.permanent, err)
			}
			msg := err.Error()
			for _, leak := range []string{"T0K3N", "s3cr3t", rc.Listener.Addr().String()} {
				if strings.Contains(msg, leak) {
					t.Errorf("error %q holds the URL part %q", msg, leak)
				}
			}
			for _, want := range []string{"POST", http.StatusText(tc.status), "receiver says no"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q lacks %q", msg, want)
				}
			}
			if n := len(rc.requests()); n != 1 {
				t.Errorf("receiver got %d requests; want 1 (redirects are not followed)", n)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		status   int
		header   func() string
		min, max time.Duration
	}{
		{"seconds on 429", 429, func() string { return "7" }, 7 * time.Second, 7 * time.Second},
		{"seconds on 503", 503, func() string { return "120" }, 2 * time.Minute, 2 * time.Minute},
		{"http date", 429, func() string { return time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat) }, 80 * time.Second, 91 * time.Second},
		{"date in the past", 503, func() string { return "Mon, 02 Jan 2006 15:04:05 GMT" }, 0, 0},
		{"garbage", 503, func() string { return "soon" }, 0, 0},
		{"none", 503, func() string { return "" }, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rc := newReceiver(t, func(w http.ResponseWriter, _ *http.Request) {
				if v := tc.header(); v != "" {
					w.Header().Set("Retry-After", v)
				}
				w.WriteHeader(tc.status)
			})
			a := build(t, config.Action{"type": "webhook", "url": rc.URL, "allow_private": true})
			err := a.Execute(t.Context(), newEvent())
			if err == nil || errors.Is(err, handlers.ErrPermanent) {
				t.Fatalf("err = %v; want a transient error", err)
			}
			if got := handlers.RetryAfter(err); got < tc.min || got > tc.max {
				t.Errorf("RetryAfter = %s; want between %s and %s", got, tc.min, tc.max)
			}
		})
	}
}

func TestNetworkErrorIsTransient(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	url := rc.URL + "/T0K3N"
	rc.Close() // nothing listens there any more
	a := build(t, config.Action{"type": "webhook", "url": url, "allow_private": true})
	err := a.Execute(t.Context(), newEvent())
	if err == nil || errors.Is(err, handlers.ErrPermanent) {
		t.Fatalf("err = %v; want a transient error", err)
	}
	if strings.Contains(err.Error(), "T0K3N") {
		t.Errorf("error %q holds the URL", err)
	}
}

func TestContextCancelStopsSlowRequest(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	a := build(t, config.Action{"type": "webhook", "url": rc.URL, "allow_private": true, "timeout": "1m"})
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	err := a.Execute(ctx, newEvent())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v; want context.Canceled", err)
	}
	if errors.Is(err, handlers.ErrPermanent) {
		t.Errorf("a cancelled request is permanent: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Execute returned after %s; want soon after the cancel", d)
	}
}

// TestConforms runs the checks every action must pass: a cancelled
// context and a receiver that never answers end Execute soon with a
// transient error, and Close can be called twice.
func TestConforms(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	actiontest.Check(t, actiontest.Case{
		Registry: registry(t),
		Config:   config.Action{"type": "webhook", "url": rc.URL, "allow_private": true, "timeout": "1m"},
		Blocking: config.Action{"type": "webhook", "url": actiontest.SilentServer(t).URL, "allow_private": true, "timeout": "1m"},
	})
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	rc := newReceiver(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	a := build(t, config.Action{"type": "webhook", "url": rc.URL, "allow_private": true, "timeout": "200ms"})
	start := time.Now()
	err := a.Execute(t.Context(), newEvent())
	if err == nil || errors.Is(err, handlers.ErrPermanent) {
		t.Fatalf("err = %v; want a transient timeout", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Execute returned after %s; want about 200ms", d)
	}
}

func TestTemplates(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	a := build(t, config.Action{
		"type": "webhook", "allow_private": true, "method": "put",
		"url": rc.URL + "/{{.entity_type}}/{{.entity_id}}?status={{.data.status}}",
		"headers": map[string]any{
			"X-Entity":     "{{.entity_type}}:{{.entity_id}}",
			"X-Static":     "plain",
			"Content-Type": "text/plain",
		},
		"body_format": "text",
		"body":        "{{.event_type}} {{.entity_type}} {{.entity_id}} now {{.data.status}}",
	})
	ev := newEvent()
	if err := a.Execute(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	got := rc.only(t)
	if got.Method != http.MethodPut || got.Path != "/Order/42" || got.Query != "status=shipped" {
		t.Errorf("request = %s %s?%s; want PUT /Order/42?status=shipped", got.Method, got.Path, got.Query)
	}
	for k, want := range map[string]string{"X-Entity": "Order:42", "X-Static": "plain", "Content-Type": "text/plain"} {
		if v := got.Header.Get(k); v != want {
			t.Errorf("header %s = %q; want %q", k, v, want)
		}
	}
	if string(got.Body) != "UPDATE Order 42 now shipped" {
		t.Errorf("body = %q; want %q", got.Body, "UPDATE Order 42 now shipped")
	}
}

func TestGetSendsNoBody(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	a := build(t, config.Action{"type": "webhook", "url": rc.URL, "allow_private": true, "method": "GET"})
	if err := a.Execute(t.Context(), newEvent()); err != nil {
		t.Fatal(err)
	}
	if got := rc.only(t); got.Method != http.MethodGet || len(got.Body) != 0 || got.Header.Get("Content-Type") != "" {
		t.Errorf("GET request: body %q, Content-Type %q; want neither", got.Body, got.Header.Get("Content-Type"))
	}
}

// A JSON body template escapes values by their place in the JSON text:
// whatever the event holds, the body stays valid JSON and decodes to the
// event's values.
func TestJSONBodyStaysValid(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	body := `{"order": "{{.entity_id}}", "note": {{.data.note}}, "piped": {{.data.note | json}}, "data": {{.data}}, "missing": {{.data.nope}}}`
	a := build(t, config.Action{"type": "webhook", "url": rc.URL, "allow_private": true, "body": body})
	ev := newEvent()
	note := "she said \"ship it\"\nthen left\t\\ \u00e9 </script> \x01"
	ev.Data["note"] = note
	ev.EntityID = `4"2\`
	if err := a.Execute(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	got := rc.only(t)
	var out struct {
		Order, Note, Piped string
		Data               map[string]any
		Missing            any
	}
	if err := json.Unmarshal(got.Body, &out); err != nil {
		t.Fatalf("body is not valid JSON: %v\n%s", err, got.Body)
	}
	if out.Order != ev.EntityID || out.Note != note || out.Piped != note || out.Data["note"] != note || out.Missing != nil {
		t.Errorf("body %s decodes to %+v; want order %q and note %q everywhere", got.Body, out, ev.EntityID, note)
	}
}

// A text body is rendered as it is, with a text Content-Type unless the
// headers set one.
func TestTextBody(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		headers map[string]any
		ct      string
	}{
		{nil, "text/plain; charset=utf-8"},
		{map[string]any{"content-type": "application/x-www-form-urlencoded"}, "application/x-www-form-urlencoded"},
	} {
		rc := newReceiver(t, nil)
		raw := config.Action{
			"type": "webhook", "url": rc.URL, "allow_private": true,
			"body_format": "text", "body": `status={{.data.status}} "quoted"`,
		}
		if tc.headers != nil {
			raw["headers"] = tc.headers
		}
		if err := build(t, raw).Execute(t.Context(), newEvent()); err != nil {
			t.Fatal(err)
		}
		got := rc.only(t)
		if string(got.Body) != `status=shipped "quoted"` || got.Header.Get("Content-Type") != tc.ct {
			t.Errorf("body %q with Content-Type %q; want the text as rendered with %q", got.Body, got.Header.Get("Content-Type"), tc.ct)
		}
	}
}

func TestHeaderInjectionRefused(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	a := build(t, config.Action{
		"type": "webhook", "url": rc.URL, "allow_private": true,
		"headers": map[string]any{"X-Note": "{{.data.note}}"},
	})
	ev := newEvent()
	ev.Data["note"] = "x\r\nX-Injected: yes"
	err := a.Execute(t.Context(), ev)
	if !errors.Is(err, handlers.ErrPermanent) {
		t.Fatalf("err = %v; want a permanent error", err)
	}
	if n := len(rc.requests()); n != 0 {
		t.Errorf("receiver got %d requests; want none", n)
	}
}

func TestRenderedURLMustBeAbsolute(t *testing.T) {
	t.Parallel()
	a := build(t, config.Action{"type": "webhook", "url": "{{.data.target}}", "allow_private": true})
	ev := newEvent()
	ev.Data["target"] = "/relative/T0K3N"
	err := a.Execute(t.Context(), ev)
	if !errors.Is(err, handlers.ErrPermanent) || strings.Contains(err.Error(), "T0K3N") {
		t.Fatalf("err = %v; want a permanent error without the URL", err)
	}
}

func TestURLFromEnv(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	a := build(t, config.Action{"type": "webhook", "url_env": setEnv(t, rc.URL+"/from-env"), "allow_private": true})
	if err := a.Execute(t.Context(), newEvent()); err != nil {
		t.Fatal(err)
	}
	if got := rc.only(t); got.Path != "/from-env" {
		t.Errorf("path = %q; want /from-env", got.Path)
	}
}

func TestBuildErrors(t *testing.T) {
	t.Parallel()
	reg := registry(t)
	for _, tc := range []struct {
		name string
		raw  config.Action
		want string
	}{
		{"url_env unset", config.Action{"type": "webhook", "url_env": "MILLRACE_TEST_HOOK_NEVER_SET"}, "MILLRACE_TEST_HOOK_NEVER_SET"},
		{"url_env not a URL", config.Action{"type": "webhook", "url_env": setEnv(t, "ftp://example.com/T0K3N")}, "http or https"},
		{"secret_env unset", config.Action{"type": "webhook", "url": "https://example.com/", "secret_env": "MILLRACE_TEST_HOOK_NEVER_SET"}, "secret_env"},
		{"whsec not base64", config.Action{"type": "webhook", "url": "https://example.com/", "secret_env": setEnv(t, "whsec_***")}, "base64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := reg.Decode(path0, tc.raw)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			_, err = reg.Build(t.Context(), spec, handlers.Deps{})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path0) {
				t.Fatalf("Build = %v; want an error naming %s and %q", err, path0, tc.want)
			}
			if strings.Contains(err.Error(), "T0K3N") {
				t.Errorf("error %q holds the URL", err)
			}
		})
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	a := build(t, config.Action{"type": "webhook", "url": rc.URL, "allow_private": true})
	if err := a.Execute(t.Context(), newEvent()); err != nil {
		t.Fatal(err)
	}
	c := a.(interface{ Close() error })
	for range 2 {
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
}

// A 429 or 503 answer tells the delivery limits that the endpoint is
// overloaded; other failures do not.
func TestOverloadedAnswers(t *testing.T) {
	for code, want := range map[int]bool{429: true, 503: true, 500: false, 502: false, 408: false} {
		err := error(&webhook.StatusError{Method: "POST", StatusCode: code, Status: strconv.Itoa(code)})
		if got := handlers.IsOverloaded(err); got != want {
			t.Errorf("IsOverloaded(%d) = %v; want %v", code, got, want)
		}
		wrapped := &handlers.RetryAfterError{Err: err, After: time.Second}
		if got := handlers.IsOverloaded(wrapped); got != want {
			t.Errorf("IsOverloaded(%d with Retry-After) = %v; want %v", code, got, want)
		}
	}
	if !handlers.IsOverloaded(context.DeadlineExceeded) {
		t.Error("a timeout is not taken as overload")
	}
	// A 429 shows the endpoint up: it does not count against its
	// breaker; a 503 does.
	for code, want := range map[int]bool{429: false, 503: true, 500: true} {
		err := &handlers.RetryAfterError{Err: &webhook.StatusError{Method: "POST", StatusCode: code}, After: time.Second}
		if got := middleware.BreakerFailure(err); got != want {
			t.Errorf("BreakerFailure(%d) = %v; want %v", code, got, want)
		}
	}
}
