package webhook_test

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/actiontest"
	"github.com/millrace/millrace/handlers/webhook"
)

const path0 = "observers.o.actions[0]"

// received is one request as the receiver saw it.
type received struct {
	Method string
	Path   string
	Query  string
	Header http.Header
	Body   []byte
}

// receiver is a real HTTP server that records requests and answers with
// whatever respond says (200 by default).
type receiver struct {
	*httptest.Server
	mu      sync.Mutex
	reqs    []received
	respond func(w http.ResponseWriter, r *http.Request)
}

func newReceiver(t *testing.T, respond func(w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{respond: respond}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.reqs = append(rc.reqs, received{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), body})
		rc.mu.Unlock()
		if rc.respond != nil {
			rc.respond(w, r)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) requests() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.reqs...)
}

func (rc *receiver) only(t *testing.T) received {
	t.Helper()
	reqs := rc.requests()
	if len(reqs) != 1 {
		t.Fatalf("receiver got %d requests; want 1", len(reqs))
	}
	return reqs[0]
}

// newID returns a random UUID v4.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func newEvent() *event.Event {
	return &event.Event{
		ID:        newID(),
		Type:      event.Update,
		Entity:    "Order",
		EntityID:  "42",
		Data:      map[string]any{"status": "shipped", "total": int64(100)},
		Changes:   map[string]event.Change{"status": {Old: "paid", New: "shipped"}},
		Timestamp: time.Now().UTC().Truncate(time.Millisecond),
	}
}

var envSeq atomic.Int64

// setEnv puts value in a fresh variable and returns its name. Names are
// unique, so parallel tests do not need t.Setenv.
func setEnv(t *testing.T, value string) string {
	t.Helper()
	name := fmt.Sprintf("MILLRACE_TEST_HOOK_%d_%d", os.Getpid(), envSeq.Add(1))
	if err := os.Setenv(name, value); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Unsetenv(name) })
	return name
}

func registry(t testing.TB) *handlers.Registry {
	t.Helper()
	reg := handlers.NewRegistry()
	if err := webhook.Register(reg); err != nil {
		t.Fatal(err)
	}
	return reg
}

// build decodes raw through a registry, as the router does, and builds it
// with the spec's hash as the action hash; it is closed when the test
// ends.
func build(t testing.TB, raw config.Action) handlers.Action {
	t.Helper()
	return actiontest.Build(t, actiontest.Case{Registry: registry(t), Config: raw})
}

// verify checks a Standard Webhooks signature, written from the
// specification and independent of the package: the secret is
// "whsec_"+base64 or raw bytes; the signed content is
// "<webhook-id>.<webhook-timestamp>.<raw body>"; webhook-signature is a
// space-separated list of "v1,<base64 HMAC-SHA256>"; the timestamp must
// be within tolerance of now.
func verify(secret string, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
	if id == "" || ts == "" || sigs == "" {
		return errors.New("missing webhook-id, webhook-timestamp or webhook-signature")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("timestamp %q is not unix seconds", ts)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("timestamp %s is %s away from now", ts, d)
	}
	key := []byte(secret)
	if rest, ok := strings.CutPrefix(secret, "whsec_"); ok {
		if key, err = base64.StdEncoding.DecodeString(rest); err != nil {
			return err
		}
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	want := mac.Sum(nil)
	for _, s := range strings.Fields(sigs) {
		version, sig, ok := strings.Cut(s, ",")
		if !ok || version != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(sig)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return errors.New("no v1 signature matches")
}
