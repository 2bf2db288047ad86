package slack_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/actiontest"
	"github.com/millrace/millrace/handlers/slack"
	"github.com/millrace/millrace/handlers/webhook"
)

const path0 = "observers.o.actions[0]"

// slackServer stands in for hooks.slack.com: it records payloads and
// answers as Slack does ("ok", or an error word with a status).
type slackServer struct {
	*httptest.Server
	mu      sync.Mutex
	got     [][]byte
	headers []http.Header
}

func newSlack(t *testing.T, respond func(w http.ResponseWriter, r *http.Request)) *slackServer {
	t.Helper()
	s := &slackServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.got = append(s.got, b)
		s.headers = append(s.headers, r.Header.Clone())
		s.mu.Unlock()
		if r.Method != http.MethodPost || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, "invalid_payload")
			return
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil || m["text"] == "" {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, "invalid_payload")
			return
		}
		if respond != nil {
			respond(w, r)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *slackServer) payloads() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.got...)
}

var envSeq atomic.Int64

func setEnv(t *testing.T, value string) string {
	t.Helper()
	name := fmt.Sprintf("MILLRACE_TEST_SLACK_%d_%d", os.Getpid(), envSeq.Add(1))
	if err := os.Setenv(name, value); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Unsetenv(name) })
	return name
}

func registry(t *testing.T) *handlers.Registry {
	t.Helper()
	reg := handlers.NewRegistry()
	if err := slack.Register(reg); err != nil {
		t.Fatal(err)
	}
	return reg
}

// build decodes raw through a registry and builds it, as the router does;
// it is closed when the test ends.
func build(t *testing.T, raw config.Action) handlers.Action {
	t.Helper()
	return actiontest.Build(t, actiontest.Case{Registry: registry(t), Config: raw})
}

func newEvent() *event.Event {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return &event.Event{
		ID:        fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]),
		Type:      event.Insert,
		Entity:    "Order",
		EntityID:  "42",
		Data:      map[string]any{"status": "new", "customer": "Ada"},
		Timestamp: time.Now().UTC(),
	}
}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("payload is not JSON: %v\n%s", err, b)
	}
	return m
}

func TestDefaultMessage(t *testing.T) {
	t.Parallel()
	srv := newSlack(t, nil)
	a := build(t, config.Action{"type": "slack", "url_env": setEnv(t, srv.URL+"/services/T0/B0/X"), "allow_private": true})
	if err := a.Execute(t.Context(), newEvent()); err != nil {
		t.Fatal(err)
	}
	p := srv.payloads()
	if len(p) != 1 {
		t.Fatalf("got %d posts; want 1", len(p))
	}
	m := decode(t, p[0])
	if m["text"] != "INSERT on Order (ID: 42)" {
		t.Errorf("text = %q; want %q", m["text"], "INSERT on Order (ID: 42)")
	}
	if _, has := m["channel"]; has {
		t.Errorf("payload %s has a channel; want none by default", p[0])
	}
}

func TestTemplatedMessageAndChannel(t *testing.T) {
	t.Parallel()
	srv := newSlack(t, nil)
	a := build(t, config.Action{
		"type": "slack", "url_env": setEnv(t, srv.URL), "allow_private": true,
		"text":    "*{{.entity_type}} {{.entity_id}}* is {{.data.status}}: {{.data.note}}",
		"channel": "#orders-{{.data.region}}",
	})
	ev := newEvent()
	ev.Data["region"] = "eu"
	note := "quote \" backslash \\ newline\n tab\t <b>&amp; \x01 \u00e9 \xff"
	ev.Data["note"] = note
	if err := a.Execute(t.Context(), ev); err != nil {
		t.Fatal(err)
	}
	m := decode(t, srv.payloads()[0])
	want := "*Order 42* is new: " + strings.ToValidUTF8(note, "\uFFFD")
	if m["text"] != want || m["channel"] != "#orders-eu" {
		t.Errorf("payload = %v; want text %q and channel #orders-eu", m, want)
	}
}

func TestStatusClasses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status    int
		body      string
		permanent bool
	}{
		{400, "invalid_payload", true},
		{403, "action_prohibited", true},
		{404, "channel_not_found", true},
		{410, "channel_is_archived", true},
		{429, "rate_limited", false},
		{500, "rollup_error", false},
		{503, "service_unavailable", false},
	} {
		t.Run(tc.body, func(t *testing.T) {
			t.Parallel()
			srv := newSlack(t, func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			})
			a := build(t, config.Action{"type": "slack", "url_env": setEnv(t, srv.URL+"/services/T0/B0/S3CR3T"), "allow_private": true})
			err := a.Execute(t.Context(), newEvent())
			if err == nil {
				t.Fatalf("status %d: err = nil; want an error", tc.status)
			}
			if got := errors.Is(err, handlers.ErrPermanent); got != tc.permanent {
				t.Errorf("status %d: permanent = %v; want %v (%v)", tc.status, got, tc.permanent, err)
			}
			if !strings.Contains(err.Error(), tc.body) || strings.Contains(err.Error(), "S3CR3T") {
				t.Errorf("error %q: want Slack's %q and not the URL", err, tc.body)
			}
		})
	}
}

func TestRateLimitRetryAfter(t *testing.T) {
	t.Parallel()
	srv := newSlack(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = io.WriteString(w, "rate_limited")
	})
	a := build(t, config.Action{"type": "slack", "url_env": setEnv(t, srv.URL), "allow_private": true})
	actiontest.ExpectRetryAfter(t, a.Execute(t.Context(), newEvent()), 30*time.Second)
}

// TestConforms runs the checks every action must pass: a cancelled
// context and a server that never answers end Execute soon with a
// transient error, and Close can be called twice.
func TestConforms(t *testing.T) {
	t.Parallel()
	srv := newSlack(t, nil)
	actiontest.Check(t, actiontest.Case{
		Registry: registry(t),
		Config:   config.Action{"type": "slack", "url_env": setEnv(t, srv.URL), "allow_private": true, "timeout": "1m"},
		Blocking: config.Action{"type": "slack", "url_env": setEnv(t, actiontest.SilentServer(t).URL), "allow_private": true, "timeout": "1m"},
	})
}

func TestContextCancel(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	srv := newSlack(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	a := build(t, config.Action{"type": "slack", "url_env": setEnv(t, srv.URL), "allow_private": true, "timeout": "1m"})
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	err := a.Execute(ctx, newEvent())
	if !errors.Is(err, context.Canceled) || errors.Is(err, handlers.ErrPermanent) {
		t.Fatalf("err = %v; want a transient context.Canceled", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Execute returned after %s; want soon after the cancel", d)
	}
}

func TestLoopbackRefusedWithoutAllowPrivate(t *testing.T) {
	t.Parallel()
	srv := newSlack(t, nil)
	a := build(t, config.Action{"type": "slack", "url_env": setEnv(t, srv.URL)})
	err := a.Execute(t.Context(), newEvent())
	if !errors.Is(err, webhook.ErrBlocked) || !errors.Is(err, handlers.ErrPermanent) {
		t.Fatalf("err = %v; want a permanent ErrBlocked", err)
	}
	if n := len(srv.payloads()); n != 0 {
		t.Fatalf("server got %d posts; want 0", n)
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	valid := config.Action{"type": "slack", "url_env": "SLACK_URL"}
	for _, tc := range []struct {
		name   string
		change config.Action
		drop   string
		path   string
		msg    string
	}{
		{name: "missing url_env", drop: "url_env", path: ".url_env", msg: "required"},
		{name: "inline url", change: config.Action{"url": "https://hooks.slack.com/x"}, path: ".url", msg: "unknown key"},
		{name: "text does not parse", change: config.Action{"text": "{{.entity_id"}, path: ".text", msg: "does not parse"},
		{name: "empty text", change: config.Action{"text": ""}, path: ".text", msg: "empty"},
		{name: "channel does not parse", change: config.Action{"channel": "{{if}}"}, path: ".channel", msg: "does not parse"},
		{name: "zero timeout", change: config.Action{"timeout": "0s"}, path: ".timeout", msg: "positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			raw := maps.Clone(valid)
			delete(raw, tc.drop)
			maps.Copy(raw, tc.change)
			_, err := registry(t).Decode(path0, raw)
			var ce *config.Error
			found := false
			for _, e := range config.Errors(err) {
				if errors.As(e, &ce) && ce.Path == path0+tc.path && strings.Contains(ce.Msg, tc.msg) {
					found = true
				}
			}
			if !found {
				t.Fatalf("Decode(%v) = %v; want an error at %s containing %q", raw, err, path0+tc.path, tc.msg)
			}
		})
	}
	spec, err := registry(t).Decode(path0, valid)
	if err != nil {
		t.Fatalf("the valid section does not decode: %v", err)
	}
	c := spec.Config.(slack.Config)
	if c.Text != slack.DefaultText || c.Timeout.D() != 10*time.Second || c.AllowPrivate || c.Channel != "" {
		t.Errorf("defaults = %+v; want the default text, 10s, allow_private false, no channel", c)
	}
}

func TestBuildErrors(t *testing.T) {
	t.Parallel()
	reg := registry(t)
	for _, tc := range []struct {
		name, env, want string
	}{
		{"unset", "MILLRACE_TEST_SLACK_NEVER_SET", "MILLRACE_TEST_SLACK_NEVER_SET"},
		{"not a URL", setEnv(t, "hooks.slack.com/services/S3CR3T"), "http or https"},
	} {
		spec, err := reg.Decode(path0, config.Action{"type": "slack", "url_env": tc.env})
		if err != nil {
			t.Fatal(err)
		}
		_, err = reg.Build(t.Context(), spec, handlers.Deps{})
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "S3CR3T") {
			t.Errorf("%s: Build = %v; want an error naming %q, without the URL", tc.name, err, tc.want)
		}
	}
}
