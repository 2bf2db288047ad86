package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers/webhook"
)

// SecretEnv names the variable that holds the signing secret of the
// webhook actions built by [Receiver.Action].
const SecretEnv = "MILLRACE_E2E_HOOK_SECRET"

// Delivery is one request a webhook action made to the receiver.
type Delivery struct {
	// Path is the request path without its leading slash: the name the
	// action was given in [Receiver.Action].
	Path string
	// Key is the Idempotency-Key header; WebhookID the webhook-id one.
	Key, WebhookID string
	// Attempt counts the requests with this Path and Key, from 1.
	Attempt int
	// Status is what the receiver answered.
	Status int
	// At is when the request arrived.
	At time.Time
	// Event is the body, decoded as an event envelope; nil when it is
	// not one.
	Event *event.Event
}

// OK reports whether the receiver accepted the delivery (2xx).
func (d *Delivery) OK() bool { return d.Status >= 200 && d.Status < 300 }

// Responder decides the answer to a delivery: a status, after a delay.
// A delay ends early when the request's context ends (the action's
// timeout).
type Responder func(d *Delivery) (status int, delay time.Duration)

// Receiver is the webhook endpoint of the suites: an HTTP server that
// checks every request's Standard Webhooks signature and records it. A
// request with a missing or wrong signature is answered 401 and counted;
// the test fails at its end if there was any.
type Receiver struct {
	// URL is the server's base URL.
	URL    string
	secret []byte
	srv    *httptest.Server

	mu         sync.Mutex
	all        []*Delivery
	byPath     map[string][]*Delivery
	okByPath   map[string]int
	attempts   map[string]int
	responders map[string]Responder
	unsigned   []string
}

// NewReceiver starts a receiver that answers 204 to every delivery until
// told otherwise with Handle. It stops when the test ends.
func NewReceiver(t testing.TB) *Receiver {
	t.Helper()
	secret := make([]byte, 24)
	_, _ = rand.Read(secret)
	r := &Receiver{secret: secret, byPath: map[string][]*Delivery{}, okByPath: map[string]int{}, attempts: map[string]int{},
		responders: map[string]Responder{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	r.URL = r.srv.URL
	t.Cleanup(func() {
		r.srv.CloseClientConnections()
		r.srv.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.unsigned) > 0 {
			t.Errorf("e2e: %d deliveries without a valid signature, e.g. %s", len(r.unsigned), r.unsigned[0])
		}
	})
	return r
}

// Env returns the environment entry that gives the actions the signing
// secret.
func (r *Receiver) Env() string { return r.EnvAs(SecretEnv) }

// EnvAs returns the environment entry that holds the signing secret in
// the variable name, for a second receiver of one process (its actions
// then set secret_env to name).
func (r *Receiver) EnvAs(name string) string { return name + "=" + r.Secret() }

// Secret is the signing secret as the actions are given it.
func (r *Receiver) Secret() string { return "whsec_" + base64.StdEncoding.EncodeToString(r.secret) }

// Action returns a signed webhook action posting the event envelope to
// path on the receiver; extra fields are added to it (timeout, ...).
func (r *Receiver) Action(path string, extra map[string]any) map[string]any {
	a := map[string]any{"type": "webhook", "url": r.URL + "/" + path, "secret_env": SecretEnv, "allow_private": true}
	for k, v := range extra {
		a[k] = v
	}
	return a
}

// Handle sets how path answers from now on; nil restores 204.
func (r *Receiver) Handle(path string, fn Responder) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if fn == nil {
		delete(r.responders, path)
		return
	}
	r.responders[path] = fn
}

func (r *Receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	d := &Delivery{
		Path: strings.TrimPrefix(req.URL.Path, "/"), Key: req.Header.Get("Idempotency-Key"),
		WebhookID: req.Header.Get("Webhook-Id"), At: time.Now(),
	}
	if ev, err := event.Decode(body); err == nil {
		d.Event = ev
	}
	r.mu.Lock()
	if !r.verify(req.Header, body) {
		r.unsigned = append(r.unsigned, fmt.Sprintf("%s %s webhook-id=%q", req.Method, req.URL.Path, d.WebhookID))
		r.mu.Unlock()
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	k := d.Path + "\x00" + d.Key
	r.attempts[k]++
	d.Attempt = r.attempts[k]
	fn := r.responders[d.Path]
	r.mu.Unlock()

	status, delay := http.StatusNoContent, time.Duration(0)
	if fn != nil {
		status, delay = fn(d)
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-req.Context().Done():
			status = 499 // the client gave up; recorded, never seen by it
		}
	}
	d.Status = status
	r.mu.Lock()
	r.all = append(r.all, d)
	r.byPath[d.Path] = append(r.byPath[d.Path], d)
	if d.OK() {
		r.okByPath[d.Path]++
	}
	r.mu.Unlock()
	w.WriteHeader(status)
}

// verify checks the Standard Webhooks signature (webhook.Verify, the
// function millrace offers receivers) and that the idempotency key is
// the webhook id.
func (r *Receiver) verify(h http.Header, body []byte) bool {
	return h.Get("Idempotency-Key") == h.Get("Webhook-Id") &&
		webhook.Verify(r.secret, h, body, time.Now(), webhook.DefaultTolerance) == nil
}

// Requests returns every request made to path, in arrival order.
func (r *Receiver) Requests(path string) []*Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Delivery(nil), r.byPath[path]...)
}

// Delivered returns the requests to path that the receiver accepted.
func (r *Receiver) Delivered(path string) []*Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*Delivery
	for _, d := range r.byPath[path] {
		if d.OK() {
			out = append(out, d)
		}
	}
	return out
}

// Count returns how many requests to path the receiver accepted.
func (r *Receiver) Count(path string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.okByPath[path]
}

// Wait polls cond until it holds; on timeout it fails the test with
// what, and the receiver's counts by path.
func (r *Receiver) Wait(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("e2e: %s: not within %s (receiver: %s)", what, timeout, r.Summary())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// Summary lists the requests and acceptances by path.
func (r *Receiver) Summary() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	paths := make([]string, 0, len(r.byPath))
	for p := range r.byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var b strings.Builder
	for _, p := range paths {
		fmt.Fprintf(&b, "/%s: %d requests, %d accepted; ", p, len(r.byPath[p]), r.okByPath[p])
	}
	if b.Len() == 0 {
		return "no requests"
	}
	return strings.TrimSuffix(b.String(), "; ")
}

// OfEntity keeps the deliveries of one entity id, in their order.
func OfEntity(ds []*Delivery, entityID string) []*Delivery {
	var out []*Delivery
	for _, d := range ds {
		if d.Event != nil && d.Event.EntityID == entityID {
			out = append(out, d)
		}
	}
	return out
}

// Ns returns the data.n of each delivery (-1 where it has none).
func Ns(ds []*Delivery) []int64 {
	out := make([]int64, len(ds))
	for i, d := range ds {
		out[i] = -1
		if d.Event != nil {
			if n, ok := d.Event.Data["n"].(int64); ok {
				out[i] = n
			}
		}
	}
	return out
}
