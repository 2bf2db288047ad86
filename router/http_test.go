package router_test

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

	"github.com/google/uuid"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/internal/routertest"
	"github.com/millrace/millrace/router"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/embedded"
)

// seen records the events an observer's action received.
type seen struct {
	mu  sync.Mutex
	ids []string
	ch  chan string
}

type seenConfig struct{}

func (seenConfig) Validate() error { return nil }

// ingestRouter runs a router on the embedded topology whose one observer
// records every event, and returns its HTTP address.
func ingestRouter(t *testing.T, extra string) (string, *seen) {
	t.Helper()
	return ingestRouterWith(t, extra, "")
}

// ingestRouterWith is ingestRouter with more keys of the http table
// (httpExtra, after a comma) and of the embedded table.
func ingestRouterWith(t *testing.T, httpExtra, embeddedExtra string) (string, *seen) {
	t.Helper()
	s := &seen{ch: make(chan string, 1000)}
	reg := handlers.NewRegistry()
	handlers.MustRegister(reg, "record", func(_ context.Context, _ seenConfig, _ handlers.Deps) (handlers.Action, error) {
		return handlers.ActionFunc(func(_ context.Context, ev *event.Event) error {
			s.mu.Lock()
			s.ids = append(s.ids, ev.ID)
			s.mu.Unlock()
			s.ch <- ev.ID
			return nil
		}), nil
	})
	topo := topologies.NewRegistry()
	if err := embedded.Register(topo); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
http = { addr = "127.0.0.1:0" %s}
[embedded]
data_dir = %q
%s
[router]
shutdown_timeout = "5s"
[observers.all]
actions = [{type = "record"}]
`, httpExtra, t.TempDir(), embeddedExtra)), nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := routertest.Start(t, cfg, router.Options{Actions: reg, Topologies: topo})
	return "http://" + addr, s
}

func post(t *testing.T, url string, body []byte) (int, router.IngestResponse) {
	t.Helper()
	resp, err := http.Post(url+"/v1/events", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out router.IngestResponse
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("response is not JSON: %s", b)
	}
	return resp.StatusCode, out
}

func newEvent(entity, id string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"event_type":"INSERT","entity_type":%q,"entity_id":%q,"data":{"n":1}}`, uuid.NewString(), entity, id)
}

func TestIngestDeliversToObserver(t *testing.T) {
	url, s := ingestRouter(t, "")
	body := newEvent("Order", "1")
	code, resp := post(t, url, body)
	if code != http.StatusAccepted || resp.Accepted != 1 {
		t.Fatalf("POST = %d %+v", code, resp)
	}
	select {
	case id := <-s.ch:
		if id != resp.IDs[0] {
			t.Errorf("observer got %s; want %s", id, resp.IDs[0])
		}
	case <-time.After(10 * time.Second):
		t.Fatal("observer did not receive the event")
	}
}

func TestIngestBatch(t *testing.T) {
	url, s := ingestRouter(t, "")
	var parts [][]byte
	for i := range 20 {
		parts = append(parts, newEvent("Order", fmt.Sprint(i)))
	}
	code, resp := post(t, url, append(append([]byte("["), bytes.Join(parts, []byte(","))...), ']'))
	if code != http.StatusAccepted || resp.Accepted != 20 {
		t.Fatalf("POST batch = %d %+v", code, resp)
	}
	got := map[string]bool{}
	deadline := time.After(10 * time.Second)
	for len(got) < 20 {
		select {
		case id := <-s.ch:
			got[id] = true
		case <-deadline:
			t.Fatalf("observer got %d of 20 events", len(got))
		}
	}
}

func TestIngestRejectsBadInput(t *testing.T) {
	url, s := ingestRouter(t, ", max_body_bytes = 65536 ")
	valid := newEvent("Order", "1")
	tests := []struct {
		name   string
		body   []byte
		status int
		want   string
	}{
		{"not json", []byte("hello"), 400, "JSON object"},
		{"empty", []byte(""), 400, "JSON object"},
		{"missing id", []byte(`{"event_type":"INSERT","entity_type":"Order"}`), 400, "id: is required"},
		{"unknown event type", []byte(`{"id":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01","event_type":"MERGE","entity_type":"Order"}`), 400, "unknown type"},
		{"data not an object", []byte(`{"id":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01","event_type":"INSERT","entity_type":"Order","data":5}`), 400, "data: must be a JSON object"},
		{"one bad in a batch", append(append([]byte("["), valid...), []byte(`,{"id":"nope"}]`)...), 400, "1 of 2 events rejected"},
		{"too large", append([]byte(`{"id":"`), bytes.Repeat([]byte("x"), 100_000)...), 413, "max_body_bytes"},
		{"empty batch", []byte("[]"), 400, "empty batch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, resp := post(t, url, tt.body)
			if code != tt.status {
				t.Errorf("status = %d; want %d (%+v)", code, tt.status, resp)
			}
			all := resp.Error
			for _, r := range resp.Rejected {
				all += " " + r.Reason
			}
			if !strings.Contains(all, tt.want) {
				t.Errorf("response %+v lacks %q", resp, tt.want)
			}
		})
	}
	// A batch with one bad event publishes none of it.
	select {
	case id := <-s.ch:
		t.Fatalf("observer received %s from a rejected batch", id)
	case <-time.After(300 * time.Millisecond):
	}
	// The process keeps serving after bad input.
	code, _ := post(t, url, newEvent("Order", "2"))
	if code != http.StatusAccepted {
		t.Fatalf("valid event after bad input: %d", code)
	}
	select {
	case <-s.ch:
	case <-time.After(10 * time.Second):
		t.Fatal("valid event after bad input was not delivered")
	}
}

func TestIngest20MB(t *testing.T) {
	url, _ := ingestRouter(t, "")
	big := bytes.Repeat([]byte("a"), 20<<20)
	code, resp := post(t, url, append(append([]byte(`{"data":{"x":"`), big...), `"}}`...))
	if code != http.StatusRequestEntityTooLarge {
		t.Fatalf("20 MB body: %d %+v", code, resp)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	url, s := ingestRouter(t, "")
	for path, want := range map[string]string{"/healthz": `"ok"`, "/readyz": `"ready"`} {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("GET %s = %d %s", path, resp.StatusCode, b)
		}
	}
	post(t, url, newEvent("Order", "1"))
	<-s.ch
	// Metrics are updated after the handler returns.
	waitMetrics(t, url,
		`millrace_ingest_events_total{result="accepted",token="anonymous"} 1`,
		`millrace_events_total{result="handled"} 1`,
		"handler_execution_time_seconds", // Watermill's router metrics
		`subscriber_messages_received_total{acked="acked",handler_name="observe",subscriber_name=`,
		"go_goroutines",
	)
}

// waitMetrics waits until GET /metrics shows every one of want.
func waitMetrics(t *testing.T, url string, want ...string) {
	t.Helper()
	var body string
	for range 100 {
		resp, err := http.Get(url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		missing := false
		for _, w := range want {
			missing = missing || !strings.Contains(body, w)
		}
		if !missing {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("/metrics lacks %q", w)
		}
	}
}
