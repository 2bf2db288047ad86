package router

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/millrace/millrace/stores"

	"github.com/google/uuid"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/webhook"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/embedded"
)

// dlqRecorder records the events its actions receive, per observer.
type dlqRecorder struct {
	mu   sync.Mutex
	seen map[string][]string // observer -> event ids
	ch   chan string         // observer + " " + event id
}

type dlqRecordConfig struct {
	// Observer names the observer the action belongs to, for the record.
	Observer string `koanf:"observer"`
}

func (dlqRecordConfig) Validate() error { return nil }

func (rec *dlqRecorder) count(observer, id string) int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	n := 0
	for _, s := range rec.seen[observer] {
		if s == id {
			n++
		}
	}
	return n
}

// wait waits for observer to receive event id.
func (rec *dlqRecorder) wait(t *testing.T, observer, id string) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for rec.count(observer, id) == 0 {
		select {
		case <-rec.ch:
		case <-deadline:
			t.Fatalf("observer %s did not receive event %s", observer, id)
		}
	}
}

// dlqTestRouter runs a router on the embedded topology, with the admin
// API on when tokenEnv is set and the given observers, which may use the
// "dlqrecord" and "webhook" actions; it returns the router with its address once it
// serves.
func dlqTestRouter(t *testing.T, tokenEnv, observers string) (*Router, string, *dlqRecorder) {
	t.Helper()
	return dlqTestRouterEnv(t, tokenEnv, observers, nil)
}

// dlqTestRouterEnv is dlqTestRouter with config overrides given as
// MILLRACE_* variables (e.g. "MILLRACE_HTTP__CONSOLE=true").
func dlqTestRouterEnv(t *testing.T, tokenEnv, observers string, env []string) (*Router, string, *dlqRecorder) {
	t.Helper()
	rec := &dlqRecorder{seen: map[string][]string{}, ch: make(chan string, 1000)}
	reg := handlers.NewRegistry()
	handlers.MustRegister(reg, "dlqrecord", func(_ context.Context, c dlqRecordConfig, _ handlers.Deps) (handlers.Action, error) {
		return handlers.ActionFunc(func(_ context.Context, ev *event.Event) error {
			rec.mu.Lock()
			rec.seen[c.Observer] = append(rec.seen[c.Observer], ev.ID)
			rec.mu.Unlock()
			rec.ch <- c.Observer + " " + ev.ID
			return nil
		}), nil
	})
	if err := webhook.Register(reg); err != nil {
		t.Fatal(err)
	}
	topo := topologies.NewRegistry()
	if err := embedded.Register(topo); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(fmt.Appendf(nil, `
[http]
addr = "127.0.0.1:0"
admin_token_env = %q
[embedded]
data_dir = %q
[router]
shutdown_timeout = "5s"
%s
`, tokenEnv, t.TempDir(), observers), env)
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	r, err := New(cfg, Options{Actions: reg, Topologies: topo, Ready: ready})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("router did not stop within 30s")
		}
	})
	select {
	case addr := <-ready:
		return r, "http://" + addr, rec
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("router not ready within 30s")
	}
	return nil, "", nil
}

// adminTokenEnv sets a fresh variable holding token and returns its name.
func adminTokenEnv(t *testing.T, token string) string {
	name := "MILLRACE_TEST_ADMIN_" + strings.ToUpper(testenv.Name(t))
	t.Setenv(name, token)
	return name
}

func adminCall(t *testing.T, method, url, token string, body any, out any) int {
	t.Helper()
	resp := adminDo(t, method, url, token, body)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, url, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

// adminDo sends body as JSON (none when nil) with token as the bearer
// (none when empty) and returns the answer, its body to be closed.
func adminDo(t *testing.T, method, url, token string, body any) *http.Response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func testEvent(t *testing.T, entity string) (*event.Event, []byte) {
	t.Helper()
	ev := &event.Event{ID: uuid.NewString(), Type: event.Insert, Entity: entity, EntityID: "42",
		Data: map[string]any{"total": int64(10)}, Timestamp: time.Now().UTC()}
	b, err := event.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	return ev, b
}

func TestAdminOffWithoutTokenEnv(t *testing.T) {
	_, addr, _ := dlqTestRouter(t, "", "")
	for _, m := range []string{http.MethodGet, http.MethodDelete} {
		if code := adminCall(t, m, addr+"/v1/dlq", "anything", nil, nil); code != http.StatusNotFound {
			t.Errorf("%s /v1/dlq without http.admin_token_env = %d; want 404", m, code)
		}
	}
	if code := adminCall(t, http.MethodPost, addr+"/v1/dlq/replay", "anything", ReplayRequest{All: true}, nil); code != http.StatusNotFound {
		t.Errorf("POST /v1/dlq/replay without http.admin_token_env = %d; want 404", code)
	}
}

func TestAdminAuth(t *testing.T) {
	env := adminTokenEnv(t, "s3cret-token")
	_, addr, _ := dlqTestRouter(t, env, "")
	for _, c := range []struct {
		header string
		want   int
	}{
		{"", http.StatusUnauthorized},
		{"Bearer ", http.StatusUnauthorized},
		{"Bearer s3cret-toke", http.StatusUnauthorized},
		{"Bearer s3cret-token-and-more", http.StatusUnauthorized},
		{"Basic s3cret-token", http.StatusUnauthorized},
		{"s3cret-token", http.StatusUnauthorized},
		{"Bearer s3cret-token", http.StatusOK},
	} {
		req, _ := http.NewRequest(http.MethodGet, addr+"/v1/dlq", nil)
		if c.header != "" {
			req.Header.Set("Authorization", c.header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("Authorization %q: %d; want %d", c.header, resp.StatusCode, c.want)
		}
		if c.want == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("Authorization %q: WWW-Authenticate = %q; want a Bearer challenge", c.header, resp.Header.Get("WWW-Authenticate"))
		}
	}
	for _, m := range []string{http.MethodDelete} {
		if code := adminCall(t, m, addr+"/v1/dlq", "wrong", nil, nil); code != http.StatusUnauthorized {
			t.Errorf("%s /v1/dlq with a wrong token = %d; want 401", m, code)
		}
	}
}

func TestAdminEmptyTokenRefusesAll(t *testing.T) {
	env := adminTokenEnv(t, "")
	_, addr, _ := dlqTestRouter(t, env, "")
	req, _ := http.NewRequest(http.MethodGet, addr+"/v1/dlq", nil)
	req.Header.Set("Authorization", "Bearer ")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("empty token variable, empty bearer: %d; want 401", resp.StatusCode)
	}
}

// adminRouter runs a router with the admin API on and observers a and b
// recording every Order event; it returns the router, its address and
// the token.
func adminRouter(t *testing.T) (*Router, string, string, *dlqRecorder) {
	const token = "t0ken"
	env := adminTokenEnv(t, token)
	r, addr, rec := dlqTestRouter(t, env, `
[observers.a]
entity = "Order"
actions = [{type = "dlqrecord", observer = "a"}]
[observers.b]
entity = "Order"
actions = [{type = "dlqrecord", observer = "b"}]
`)
	return r, addr, token, rec
}

func TestAdminListShowDeletePurge(t *testing.T) {
	r, addr, token, _ := adminRouter(t)
	ctx := context.Background()
	store := r.backend.DeadLetters
	ev, payload := testEvent(t, "Order")
	old := time.Now().Add(-2 * time.Hour).UTC()
	ids := make([]string, 3)
	for i, dl := range []stores.DeadLetter{
		{EventID: ev.ID, Observer: "a", Action: "a/0:dlqrecord", Reason: stores.ReasonExhausted, Error: "503", Attempts: 3,
			FirstFailure: old, LastFailure: old, Topic: "events", Payload: payload},
		{EventID: ev.ID, Observer: "b", Action: "b/0:dlqrecord", Reason: stores.ReasonPermanent, Error: "400", Attempts: 1, Topic: "events", Payload: payload},
		{Reason: stores.ReasonUndecodable, Error: "invalid event", Topic: "events", Payload: []byte{0xff, 0x00, 'x'}},
	} {
		id, err := store.Put(ctx, dl)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}

	var list DeadLetterList
	if code := adminCall(t, http.MethodGet, addr+"/v1/dlq", token, nil, &list); code != http.StatusOK {
		t.Fatalf("GET /v1/dlq = %d", code)
	}
	if list.Total != 3 || len(list.Entries) != 3 || list.Entries[0].ID != ids[0] || list.Entries[2].ID != ids[2] {
		t.Fatalf("list = %+v; want the 3 entries oldest first", list)
	}
	if e := list.Entries[0]; e.Observer != "a" || e.EventID != ev.ID || e.Attempts != 3 || e.PayloadBytes != len(payload) || e.Reason != "exhausted" {
		t.Errorf("first entry = %+v", e)
	}
	for _, c := range []struct {
		query string
		want  []string
	}{
		{"?observer=b", ids[1:2]},
		{"?limit=2", ids[:2]},
		{"?since=1h", ids[1:]},
		{"?since=" + time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), ids[1:]},
	} {
		var l DeadLetterList
		if code := adminCall(t, http.MethodGet, addr+"/v1/dlq"+c.query, token, nil, &l); code != http.StatusOK {
			t.Fatalf("GET /v1/dlq%s = %d", c.query, code)
		}
		var got []string
		for _, e := range l.Entries {
			got = append(got, e.ID)
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("GET /v1/dlq%s = %v; want %v", c.query, got, c.want)
		}
	}
	for _, q := range []string{"?limit=0", "?limit=x", "?since=yesterday"} {
		if code := adminCall(t, http.MethodGet, addr+"/v1/dlq"+q, token, nil, nil); code != http.StatusBadRequest {
			t.Errorf("GET /v1/dlq%s = %d; want 400", q, code)
		}
	}

	var dl stores.DeadLetter
	if code := adminCall(t, http.MethodGet, addr+"/v1/dlq/"+ids[2], token, nil, &dl); code != http.StatusOK {
		t.Fatalf("GET /v1/dlq/%s = %d", ids[2], code)
	}
	if !bytes.Equal(dl.Payload, []byte{0xff, 0x00, 'x'}) || dl.Reason != stores.ReasonUndecodable {
		t.Errorf("show = %+v; want the raw bytes and reason undecodable", dl)
	}
	if code := adminCall(t, http.MethodGet, addr+"/v1/dlq/424242", token, nil, nil); code != http.StatusNotFound {
		t.Errorf("GET unknown id = %d; want 404", code)
	}

	if code := adminCall(t, http.MethodDelete, addr+"/v1/dlq/"+ids[1], token, nil, nil); code != http.StatusNoContent {
		t.Errorf("DELETE /v1/dlq/%s = %d; want 204", ids[1], code)
	}
	if code := adminCall(t, http.MethodDelete, addr+"/v1/dlq/"+ids[1], token, nil, nil); code != http.StatusNotFound {
		t.Errorf("DELETE of a deleted id = %d; want 404", code)
	}
	if got := metricValue(t, addr, "millrace_dlq_size"); got != "2" {
		t.Errorf("millrace_dlq_size = %s; want 2", got)
	}

	var purged PurgeResponse
	if code := adminCall(t, http.MethodDelete, addr+"/v1/dlq", token, nil, &purged); code != http.StatusOK || purged.Purged != 2 {
		t.Errorf("DELETE /v1/dlq = %d %+v; want 200 and 2 purged", code, purged)
	}
	if n, err := store.Count(ctx); err != nil || n != 0 {
		t.Errorf("Count after purge = %d, %v; want 0", n, err)
	}
	if got := metricValue(t, addr, "millrace_dlq_size"); got != "0" {
		t.Errorf("millrace_dlq_size = %s; want 0", got)
	}
}

func TestAdminReplay(t *testing.T) {
	r, addr, token, rec := adminRouter(t)
	ctx := context.Background()
	store := r.backend.DeadLetters
	ev, payload := testEvent(t, "Order")
	id, err := store.Put(ctx, stores.DeadLetter{EventID: ev.ID, Observer: "a", Action: "a/0:dlqrecord",
		Reason: stores.ReasonExhausted, Error: "503", Attempts: 3, Topic: "events", Payload: payload})
	if err != nil {
		t.Fatal(err)
	}

	var res ReplayResponse
	if code := adminCall(t, http.MethodPost, addr+"/v1/dlq/replay", token, ReplayRequest{IDs: []string{id}, DryRun: true}, &res); code != http.StatusOK {
		t.Fatalf("dry run = %d %+v", code, res)
	}
	if !res.DryRun || res.Replayed != 1 || fmt.Sprint(res.IDs) != fmt.Sprint([]string{id}) {
		t.Errorf("dry run = %+v; want 1 entry that would be replayed", res)
	}
	if _, err := store.Get(ctx, id); err != nil {
		t.Errorf("entry gone after a dry run: %v", err)
	}

	res = ReplayResponse{}
	if code := adminCall(t, http.MethodPost, addr+"/v1/dlq/replay", token, ReplayRequest{IDs: []string{id}}, &res); code != http.StatusOK {
		t.Fatalf("replay = %d %+v", code, res)
	}
	if res.Replayed != 1 || len(res.Failed) != 0 {
		t.Errorf("replay = %+v; want 1 replayed", res)
	}
	rec.wait(t, "a", ev.ID)
	if _, err := store.Get(ctx, id); err == nil {
		t.Error("entry still in the store after its replay")
	}
	if got := metricValue(t, addr, "millrace_dlq_replayed_total"); got != "1" {
		t.Errorf("millrace_dlq_replayed_total = %s; want 1", got)
	}

	res = ReplayResponse{}
	if code := adminCall(t, http.MethodPost, addr+"/v1/dlq/replay", token, ReplayRequest{IDs: []string{id}}, &res); code != http.StatusNotFound {
		t.Errorf("replay of a replayed id = %d; want 404", code)
	}
	if len(res.Failed) != 1 || res.Failed[0].ID != id {
		t.Errorf("replay of a replayed id = %+v; want it among the failures", res)
	}
	for _, bad := range []string{`{}`, `{"all": true, "ids": ["1"]}`, `{"ids": ["1"], "observer": "a"}`, `{"all": 1}`, `{"every": true}`} {
		req, _ := http.NewRequest(http.MethodPost, addr+"/v1/dlq/replay", strings.NewReader(bad))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("replay %s = %d; want 400", bad, resp.StatusCode)
		}
	}
}

func TestAdminReplayAllOfObserver(t *testing.T) {
	r, addr, token, rec := adminRouter(t)
	ctx := context.Background()
	store := r.backend.DeadLetters
	var evA []*event.Event
	put := func(observer string) string {
		ev, payload := testEvent(t, "Order")
		if observer == "a" {
			evA = append(evA, ev)
		}
		id, err := store.Put(ctx, stores.DeadLetter{EventID: ev.ID, Observer: observer, Reason: stores.ReasonPermanent,
			Error: "400", Attempts: 1, Topic: "events", Payload: payload})
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	var idsA []string
	var idB string
	for i := range 5 {
		idsA = append(idsA, put("a"))
		if i == 2 {
			idB = put("b")
		}
	}

	var res ReplayResponse
	if code := adminCall(t, http.MethodPost, addr+"/v1/dlq/replay", token, ReplayRequest{All: true, Observer: "a", DryRun: true}, &res); code != http.StatusOK {
		t.Fatalf("dry run = %d", code)
	}
	if fmt.Sprint(res.IDs) != fmt.Sprint(idsA) {
		t.Errorf("dry run of all of a = %v; want %v", res.IDs, idsA)
	}
	if n, _ := store.Count(ctx); n != 6 {
		t.Errorf("Count after a dry run = %d; want 6", n)
	}

	res = ReplayResponse{}
	if code := adminCall(t, http.MethodPost, addr+"/v1/dlq/replay", token, ReplayRequest{All: true, Observer: "a"}, &res); code != http.StatusOK {
		t.Fatalf("replay all of a = %d %+v", code, res)
	}
	if fmt.Sprint(res.IDs) != fmt.Sprint(idsA) || res.Replayed != 5 {
		t.Errorf("replay all of a = %+v; want %v", res, idsA)
	}
	for _, ev := range evA {
		rec.wait(t, "a", ev.ID)
	}
	left, err := store.List(ctx, stores.DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].ID != idB {
		t.Errorf("left after replaying a = %+v; want only %s of observer b", left, idB)
	}
}

// metricValue scrapes /metrics for one unlabelled sample.
func metricValue(t *testing.T, addr, name string) string {
	t.Helper()
	resp, err := http.Get(addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return "absent"
}
