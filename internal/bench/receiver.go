package bench

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/millrace/millrace/handlers/webhook"
)

// receiver is the webhook endpoint of the webhook scenario: an HTTP
// server on loopback that checks each delivery's Standard Webhooks
// signature (webhook.VerifyMAC, as a user's receiver would) and records
// its event. It answers 204 to every delivery, so that nothing is
// retried. It runs in the bench process, whose CPU time is millrace's
// figure: its MACs are pooled, so that a delivery costs the receiver no
// hmac.New.
type receiver struct {
	url      string
	rec      *recorder
	srv      *http.Server
	macs     sync.Pool
	signed   atomic.Int64
	unsigned atomic.Int64
	logger   *slog.Logger
}

func startReceiver(rec *recorder, secret []byte, logger *slog.Logger) (*receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &receiver{url: "http://" + ln.Addr().String() + "/hook", rec: rec, logger: logger}
	r.macs.New = func() any { return hmac.New(sha256.New, secret) }
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	go func() {
		if err := r.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Warn("bench: webhook receiver", "err", err)
		}
	}()
	return r, nil
}

// delivery is the part of the event envelope the receiver reads.
type delivery struct {
	Timestamp time.Time `json:"timestamp"`
	Data      struct {
		N *int64 `json:"n"`
	} `json:"data"`
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.verify(req.Header, body) {
		r.signed.Add(1)
	} else {
		r.unsigned.Add(1)
	}
	var d delivery
	if err := json.Unmarshal(body, &d); err != nil || d.Data.N == nil {
		r.rec.bad.Add(1)
	} else {
		r.rec.mark(*d.Data.N, d.Timestamp)
	}
	w.WriteHeader(http.StatusNoContent)
}

// verify reports whether the delivery carries a valid signature.
func (r *receiver) verify(h http.Header, body []byte) bool {
	m := r.macs.Get().(hash.Hash)
	defer r.macs.Put(m)
	return webhook.VerifyMAC(m, h, body, time.Now(), webhook.DefaultTolerance) == nil
}

func (r *receiver) close() { _ = r.srv.Close() }
