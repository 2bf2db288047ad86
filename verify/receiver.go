package verify

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers/webhook"
)

// secretEnv holds the signing secret of the scratch config's webhook.
const secretEnv = "MILLRACE_VERIFY_HOOK_SECRET"

// receiver is the webhook endpoint of the scratch observer: it checks
// each request's signature and records what it accepted, in arrival
// order. While down it answers 503, as an endpoint in an outage.
type receiver struct {
	URL    string
	secret []byte
	srv    *http.Server
	down   atomic.Bool

	mu       sync.Mutex
	got      []Delivery
	refused  int // 503s answered while down
	rejected []string
}

func newReceiver() (*receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("receiver: %w", err)
	}
	r := &receiver{URL: "http://" + ln.Addr().String() + "/hook", secret: make([]byte, 24)}
	_, _ = rand.Read(r.secret)
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = r.srv.Serve(ln) }()
	return r, nil
}

// Secret is the signing secret as the webhook action is given it.
func (r *receiver) Secret() string { return "whsec_" + base64.StdEncoding.EncodeToString(r.secret) }

func (r *receiver) Close() { _ = r.srv.Close() }

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	d, err := r.decode(req.Header, body)
	if err != nil {
		r.mu.Lock()
		r.rejected = append(r.rejected, err.Error())
		r.mu.Unlock()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.down.Load() {
		r.mu.Lock()
		r.refused++
		r.mu.Unlock()
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	r.mu.Lock()
	d.At = time.Now()
	r.got = append(r.got, d)
	r.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// decode checks the signature and reads the change from the event.
func (r *receiver) decode(h http.Header, body []byte) (Delivery, error) {
	if err := webhook.Verify(r.secret, h, body, time.Now(), webhook.DefaultTolerance); err != nil {
		return Delivery{}, fmt.Errorf("signature: %w", err)
	}
	ev, err := event.Decode(body)
	if err != nil {
		return Delivery{}, err
	}
	entity, err := strconv.Atoi(ev.EntityID)
	if err != nil {
		return Delivery{}, fmt.Errorf("entity_id %q: %w", ev.EntityID, err)
	}
	seq, ok1 := ev.Data["seq"].(int64)
	sum, ok2 := ev.Data["sum"].(int64)
	if !ok1 || !ok2 {
		return Delivery{}, errors.New("event data has no integer seq and sum")
	}
	return Delivery{Entity: entity, Seq: seq, Sum: sum, Key: h.Get("Idempotency-Key")}, nil
}

// Deliveries returns what was accepted so far, in arrival order.
func (r *receiver) Deliveries() []Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Delivery(nil), r.got...)
}

// Refused returns how many requests were answered 503 so far.
func (r *receiver) Refused() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refused
}

// Rejected returns the requests refused for a bad signature or body.
func (r *receiver) Rejected() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.rejected...)
}
