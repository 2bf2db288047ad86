package router_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/router"
)

// The ingest tokens of authRouter: "orders" may send Order INSERTs and
// UPDATEs, 5 requests at once then 1 an hour, as source "shop"; "signer"
// signs its requests; "other" may send anything.
const (
	ordersToken = "orders-token-3f9a1c"
	otherToken  = "other-token-77b2e0"
	signSecret  = "whsec_" + "c2lnbmluZyBzZWNyZXQgb2YgdGhlIHRlc3Q=" // "signing secret of the test"
)

// authRouter runs an embedded router with ingest tokens on a known
// NATS port, and returns its URL and a JetStream client of its bus.
func authRouter(t *testing.T) (string, *seen, jetstream.Stream) {
	t.Helper()
	t.Setenv("MILLRACE_TEST_ORDERS_TOKEN", ordersToken)
	t.Setenv("MILLRACE_TEST_OTHER_TOKEN", otherToken)
	t.Setenv("MILLRACE_TEST_SIGN_SECRET", signSecret)
	port := testenv.FreePort(t)
	url, s := ingestRouterWith(t, `, ingest_tokens = [`+
		`{name = "orders", token_env = "MILLRACE_TEST_ORDERS_TOKEN", entity_types = ["Order"], event_types = ["INSERT", "UPDATE"], source = "shop", rate = "1/h", burst = 5}, `+
		`{name = "signer", secret_env = "MILLRACE_TEST_SIGN_SECRET"}, `+
		`{name = "other", token_env = "MILLRACE_TEST_OTHER_TOKEN"}] `, fmt.Sprintf("port = %d", port))
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), "MILLRACE")
	if err != nil {
		t.Fatal(err)
	}
	return url, s, st
}

func postWith(t *testing.T, url string, body []byte, h http.Header) (int, router.IngestResponse, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/v1/events", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = h
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out router.IngestResponse
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("answer is not JSON: %d %s", resp.StatusCode, b)
	}
	return resp.StatusCode, out, resp.Header
}

func bearer(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}, "Content-Type": {"application/json"}}
}

// signed returns Standard Webhooks headers signing body with key, made
// here from the specification rather than with millrace's own code.
func signed(key []byte, id string, at time.Time, body []byte) http.Header {
	ts := strconv.FormatInt(at.Unix(), 10)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id + "." + ts + "."))
	m.Write(body)
	return http.Header{
		"Webhook-Id": {id}, "Webhook-Timestamp": {ts},
		"Webhook-Signature": {"v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))},
	}
}

func streamMsgs(t *testing.T, st jetstream.Stream) uint64 {
	t.Helper()
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestIngestAuth: without a token, or with a wrong one, ingest answers
// 401; an event the token may not send, 403; over the token's rate,
// 429 with Retry-After; each with a JSON reason, and nothing of a
// refused request reaches the bus. The right token gets 202 and its
// event is delivered, carrying the token's name and source.
func TestIngestAuth(t *testing.T) {
	url, s, st := authRouter(t)
	order := func(typ string) []byte {
		return fmt.Appendf(nil, `{"id":%q,"event_type":%q,"entity_type":"Order","entity_id":"1","data":{"n":1}}`, uuid.NewString(), typ)
	}
	refused := []struct {
		name   string
		body   []byte
		h      http.Header
		status int
		reason string
	}{
		{"no token", order("INSERT"), http.Header{"Content-Type": {"application/json"}}, 401, "missing credentials"},
		{"wrong token", order("INSERT"), bearer("orders-token-3f9a1d"), 401, "wrong bearer token"},
		{"token of another length", order("INSERT"), bearer(ordersToken + "x"), 401, "wrong bearer token"},
		{"empty bearer", order("INSERT"), bearer(""), 401, "missing credentials"},
		{"basic auth", order("INSERT"), http.Header{"Authorization": {"Basic b3JkZXJzOnRva2Vu"}}, 401, "missing credentials"},
		{"entity type not allowed", newEvent("Customer", "1"), bearer(ordersToken), 403, `may not send entity type "Customer"`},
		{"event type not allowed", order("DELETE"), bearer(ordersToken), 403, "may not send event type DELETE"},
		{"batch with one event not allowed", []byte("[" + string(order("INSERT")) + "," + string(newEvent("Customer", "2")) + "]"),
			bearer(ordersToken), 403, "1 of 2 events not allowed"},
		{"source not allowed", fmt.Appendf(nil, `{"id":%q,"event_type":"INSERT","entity_type":"Order","entity_id":"1","source":"billing","data":{}}`, uuid.NewString()),
			bearer(ordersToken), 403, `may not send source "billing"`},
		{"signature by another key", order("INSERT"), signed([]byte("not the secret"), "msg_1", time.Now(), order("INSERT")), 401, "no v1 signature matches"},
	}
	before := streamMsgs(t, st)
	for _, c := range refused {
		code, resp, h := postWith(t, url, c.body, c.h)
		if code != c.status || resp.Accepted != 0 || !strings.Contains(resp.Error+fmt.Sprint(resp.Rejected), c.reason) {
			t.Errorf("%s: %d %+v; want %d with a reason about %q", c.name, code, resp, c.status, c.reason)
		}
		if code == 401 && h.Get("WWW-Authenticate") == "" {
			t.Errorf("%s: 401 without WWW-Authenticate", c.name)
		}
	}
	// A signed request whose body was changed after signing.
	body := order("INSERT")
	if code, resp, _ := postWith(t, url, order("INSERT"), signed(mustKey(t), "msg_2", time.Now(), body)); code != 401 {
		t.Errorf("tampered signed body: %d %+v; want 401", code, resp)
	}
	// A signature too old to be a fresh request (a replay).
	if code, resp, _ := postWith(t, url, body, signed(mustKey(t), "msg_3", time.Now().Add(-time.Hour), body)); code != 401 || !strings.Contains(resp.Error, "away from now") {
		t.Errorf("stale signature: %d %+v; want 401 about the timestamp", code, resp)
	}

	// The right token: 202 and delivered, with the token's source. The
	// "orders" token allows 3 requests at once (burst), then refuses.
	code, resp, _ := postWith(t, url, order("INSERT"), bearer(ordersToken))
	if code != http.StatusAccepted || resp.Accepted != 1 {
		t.Fatalf("right token: %d %+v; want 202", code, resp)
	}
	waitFor(t, s, resp.IDs[0])
	msg, err := st.GetLastMsgForSubject(context.Background(), ">")
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.Header.Get("Millrace-Md-" + router.IngestTokenMetadata); got != "orders" {
		t.Errorf("the published message's ingest token = %q; want orders (headers %v)", got, msg.Header)
	}
	if !bytes.Contains(msg.Data, []byte(`"source":"shop"`)) {
		t.Errorf("the event did not get the token's source: %s", msg.Data)
	}
	if n := streamMsgs(t, st); n != before+1 {
		t.Errorf("the bus holds %d new messages after %d refused requests and one accepted; want 1", n-before, len(refused)+2)
	}

	// The four 403s above counted against the rate too (they were
	// authenticated): with this one the burst of 5 is spent, so the
	// next is 429.
	code, resp, h := postWith(t, url, order("UPDATE"), bearer(ordersToken))
	if code != http.StatusTooManyRequests || !strings.Contains(resp.Error, "over its rate of 1/h") || h.Get("Retry-After") == "" {
		t.Errorf("over the rate: %d %+v Retry-After=%q; want 429 with a reason and Retry-After", code, resp, h.Get("Retry-After"))
	}
	// Another token has its own rate; a signed producer is let in.
	code, resp, _ = postWith(t, url, newEvent("Customer", "9"), bearer(otherToken))
	if code != http.StatusAccepted {
		t.Errorf("other token: %d %+v; want 202", code, resp)
	} else {
		waitFor(t, s, resp.IDs[0])
	}
	body = newEvent("Invoice", "4")
	code, resp, _ = postWith(t, url, body, signed(mustKey(t), "msg_4", time.Now(), body))
	if code != http.StatusAccepted {
		t.Errorf("signed request: %d %+v; want 202", code, resp)
	} else {
		waitFor(t, s, resp.IDs[0])
	}
	if n := streamMsgs(t, st); n != before+3 {
		t.Errorf("the bus holds %d new messages; want the 3 accepted", n-before)
	}
	metrics := get(t, url+"/metrics")
	for _, want := range []string{
		`millrace_ingest_events_total{result="accepted",token="orders"} 1`,
		`millrace_ingest_events_total{result="accepted",token="signer"} 1`,
		`millrace_ingest_events_total{result="unauthorized",token="unknown"} 8`,
		`millrace_ingest_events_total{result="forbidden",token="orders"} 4`,
		`millrace_ingest_events_total{result="rate_limited",token="orders"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func mustKey(t *testing.T) []byte {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(signSecret, "whsec_"))
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func waitFor(t *testing.T, s *seen, id string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case got := <-s.ch:
			if got == id {
				return
			}
		case <-deadline:
			t.Fatalf("event %s was not delivered", id)
		}
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestIngestOff: with http.ingest = false, POST /v1/events answers 404
// and says why; nothing is published.
func TestIngestOff(t *testing.T) {
	url, s := ingestRouter(t, ", ingest = false ")
	code, resp, _ := postWith(t, url, newEvent("Order", "1"), http.Header{"Content-Type": {"application/json"}})
	if code != http.StatusNotFound || !strings.Contains(resp.Error, "http.ingest = false") {
		t.Errorf("POST /v1/events with ingest off: %d %+v; want 404 naming http.ingest", code, resp)
	}
	select {
	case id := <-s.ch:
		t.Errorf("event %s delivered with ingest off", id)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestMetricsToken: http.metrics_token_env puts /metrics behind a
// bearer token; /healthz and /readyz stay open.
func TestMetricsToken(t *testing.T) {
	t.Setenv("MILLRACE_TEST_METRICS_TOKEN", "metrics-token-51c0")
	url, _ := ingestRouter(t, `, metrics_token_env = "MILLRACE_TEST_METRICS_TOKEN" `)
	do := func(path, token string) int {
		req, _ := http.NewRequest(http.MethodGet, url+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		path, token string
		want        int
	}{
		{"/metrics", "", 401}, {"/metrics", "wrong", 401}, {"/metrics", "metrics-token-51c0", 200},
		{"/healthz", "", 200}, {"/readyz", "", 200},
	} {
		if got := do(c.path, c.token); got != c.want {
			t.Errorf("GET %s with token %q: %d; want %d", c.path, c.token, got, c.want)
		}
	}
}
