package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/millrace/millrace/event"
)

// Handler returns the HTTP routes:
//
//	POST /v1/events  one envelope or a JSON array of them (unless http.ingest = false)
//	GET  /healthz    the process is up (also while it waits for its services)
//	GET  /readyz     the services it needs answer; else 503 and which one does not
//	GET  /metrics    Prometheus (behind http.metrics_token_env when set)
//	/v1/dlq...       the dead-letter admin API (admin.go)
//	/v1/record       the events on the bus, for millrace record (record.go)
//	/v1/try          millrace try over HTTP (try.go)
func (r *Router) Handler() http.Handler {
	mux := http.NewServeMux()
	if r.cfg.HTTP.Ingest {
		ingest := http.HandlerFunc(r.ingest)
		if r.tracer != nil {
			ingest = r.tracedIngest
		}
		mux.Handle("POST /v1/events", ingest)
	} else {
		mux.HandleFunc("POST /v1/events", func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusNotFound, IngestResponse{Error: "ingest is off on this process (http.ingest = false)"})
		})
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", r.ready)
	var metrics http.Handler = promhttp.HandlerFor(r.metrics.Registry, promhttp.HandlerOpts{})
	if env := r.cfg.HTTP.MetricsTokenEnv; env != "" {
		metrics = requireBearer(os.Getenv(env), "millrace metrics", metrics)
	}
	mux.Handle("GET /metrics", metrics)
	r.mountAdmin(mux) // /v1/dlq and /v1/record, see admin.go
	return mux
}

func (r *Router) ready(w http.ResponseWriter, req *http.Request) {
	b, why := r.builtBackend()
	if b == nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "starting", "reason": why})
		return
	}
	select {
	case <-r.running:
	default:
		// Built, but still loading (parked entities, stores) or starting
		// its handlers: what it would answer now may not hold yet.
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "starting", "reason": "starting the router"})
		return
	}
	if b.Ready == nil {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), probeTimeout)
	defer cancel()
	if err := b.Ready(ctx); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// IngestResponse is the body of every answer of POST /v1/events.
type IngestResponse struct {
	Accepted int         `json:"accepted"`
	Rejected []Rejection `json:"rejected,omitempty"`
	Error    string      `json:"error,omitempty"`
	IDs      []string    `json:"ids,omitempty"`
}

// Rejection says why one event of a request was refused.
type Rejection struct {
	Index  int    `json:"index"`
	ID     string `json:"id,omitempty"`
	Reason string `json:"reason"`
}

// ingest accepts a batch only whole: if any event is bad, none is
// published and the answer lists the reason for each bad one, so that a
// producer can fix and resend the same batch. The request's credentials
// are checked first (401), then the producer's rate (429), then what
// its events may be (403); nothing of a refused request is published.
func (r *Router) ingest(w http.ResponseWriter, req *http.Request) {
	ctx := req.Context()
	p, bearerChecked := (*producer)(nil), false
	if !r.auth.open() && hasBearer(req) {
		// A bearer token is checked before the body is read, so that an
		// unknown client cannot make millrace read max_body_bytes.
		var err error
		if p, err = r.auth.byBearer(req); err != nil {
			r.refuse(ctx, w, req, http.StatusUnauthorized, unknownProducer, err.Error())
			return
		}
		bearerChecked = true
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, r.cfg.HTTP.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			r.refuse(ctx, w, req, http.StatusRequestEntityTooLarge, producerName(p, r.auth),
				fmt.Sprintf("body larger than http.max_body_bytes (%d bytes)", r.cfg.HTTP.MaxBodyBytes))
			return
		}
		writeJSON(w, http.StatusBadRequest, IngestResponse{Error: "read body: " + err.Error()})
		return
	}
	if !r.auth.open() && !bearerChecked {
		if p, err = r.auth.bySignature(req, body); err != nil {
			r.refuse(ctx, w, req, http.StatusUnauthorized, unknownProducer, err.Error())
			return
		}
	}
	name := producerName(p, r.auth)
	if p != nil {
		if ok, wait := p.allow(); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
			r.refuse(ctx, w, req, http.StatusTooManyRequests, name,
				fmt.Sprintf("ingest token %q is over its rate of %s", p.name, p.cfg.Rate))
			return
		}
	}
	evs, errs, err := event.DecodeMany(body)
	if err != nil {
		r.refuse(ctx, w, req, http.StatusBadRequest, name, err.Error())
		return
	}
	if len(evs) == 0 {
		writeJSON(w, http.StatusBadRequest, IngestResponse{Error: "empty batch"})
		return
	}
	var rejected []Rejection
	for i, e := range errs {
		if e != nil {
			rejected = append(rejected, Rejection{Index: i, ID: peekID(body, i, len(evs) > 1 || body[0] == '['), Reason: e.Error()})
		}
	}
	if len(rejected) > 0 {
		r.metrics.Ingested.WithLabelValues("rejected", name).Add(float64(len(rejected)))
		writeJSON(w, http.StatusBadRequest, IngestResponse{Rejected: rejected, Error: fmt.Sprintf("%d of %d events rejected; none accepted", len(rejected), len(evs))})
		return
	}
	if b, why := r.builtBackend(); b == nil {
		writeJSON(w, http.StatusServiceUnavailable, IngestResponse{Error: "starting: " + why})
		return
	}
	if p != nil {
		for i, ev := range evs {
			if err := p.admit(ev); err != nil {
				rejected = append(rejected, Rejection{Index: i, ID: ev.ID, Reason: err.Error()})
			}
		}
		if len(rejected) > 0 {
			r.metrics.Ingested.WithLabelValues("forbidden", name).Add(float64(len(rejected)))
			r.logger.WarnContext(ctx, "ingest: events outside the token's allowance refused", "ingest_token", name,
				"remote", req.RemoteAddr, "refused", len(rejected), "first", rejected[0].Reason)
			writeJSON(w, http.StatusForbidden, IngestResponse{Rejected: rejected,
				Error: fmt.Sprintf("%d of %d events not allowed for this ingest token; none accepted", len(rejected), len(evs))})
			return
		}
	}
	now := time.Now().UTC()
	ids := make([]string, len(evs))
	for i, ev := range evs {
		if ev.Timestamp.IsZero() {
			ev.Timestamp = now
		}
		ids[i] = ev.ID
	}
	if err := r.publish(ctx, map[string]string{IngestTokenMetadata: name}, evs); err != nil {
		r.logger.ErrorContext(ctx, "ingest: publish failed", "ingest_token", name, "err", err)
		writeJSON(w, http.StatusServiceUnavailable, IngestResponse{Error: "bus unavailable: " + err.Error()})
		return
	}
	r.metrics.Ingested.WithLabelValues("accepted", name).Add(float64(len(evs)))
	r.logger.DebugContext(ctx, "ingest: events accepted", "ingest_token", name, "events", len(evs))
	writeJSON(w, http.StatusAccepted, IngestResponse{Accepted: len(evs), IDs: ids})
}

// refuse answers a request that is refused whole, counts it and, for
// credentials and rates, logs it with the producer's name (never with
// what the request presented).
func (r *Router) refuse(ctx context.Context, w http.ResponseWriter, req *http.Request, status int, name, reason string) {
	result := map[int]string{
		http.StatusUnauthorized:    "unauthorized",
		http.StatusTooManyRequests: "rate_limited",
	}[status]
	if result == "" {
		result = "rejected"
	} else {
		r.logger.WarnContext(ctx, "ingest: request refused", "status", status, "ingest_token", name,
			"remote", req.RemoteAddr, "reason", reason)
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="millrace ingest"`)
	}
	r.metrics.Ingested.WithLabelValues(result, name).Inc()
	writeJSON(w, status, IngestResponse{Error: reason})
}

// producerName is the label of a request's producer in logs, metrics
// and message metadata.
func producerName(p *producer, a *ingestAuth) string {
	switch {
	case p != nil:
		return p.name
	case a.open():
		return anonymousProducer
	}
	return unknownProducer
}

// peekID finds the id of the i-th event of a body whose events did not
// decode, for the rejection list; it gives up quietly.
func peekID(body []byte, i int, array bool) string {
	var one struct {
		ID any `json:"id"`
	}
	if array {
		var raws []json.RawMessage
		if json.Unmarshal(body, &raws) != nil || i >= len(raws) {
			return ""
		}
		body = raws[i]
	}
	if json.Unmarshal(body, &one) != nil {
		return ""
	}
	s, _ := one.ID.(string)
	return s
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
