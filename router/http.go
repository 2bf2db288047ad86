package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/millrace/millrace/event"
)

// Handler returns the HTTP routes:
//
//	POST /v1/events  one envelope or a JSON array of them
//	GET  /healthz    the process is up (also while it waits for its services)
//	GET  /readyz     the services it needs answer; else 503 and which one does not
//	GET  /metrics    Prometheus
//	/v1/dlq...       the dead-letter admin API (admin.go)
func (r *Router) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/events", r.ingest)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", r.ready)
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.metrics.Registry, promhttp.HandlerOpts{}))
	r.mountAdmin(mux) // /v1/dlq, see admin.go
	return mux
}

func (r *Router) ready(w http.ResponseWriter, req *http.Request) {
	b, why := r.builtBackend()
	if b == nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "starting", "reason": why})
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
// producer can fix and resend the same batch.
func (r *Router) ingest(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, r.cfg.HTTP.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			r.metrics.Ingested.WithLabelValues("rejected").Inc()
			writeJSON(w, http.StatusRequestEntityTooLarge, IngestResponse{
				Error: fmt.Sprintf("body larger than http.max_body_bytes (%d bytes)", r.cfg.HTTP.MaxBodyBytes)})
			return
		}
		writeJSON(w, http.StatusBadRequest, IngestResponse{Error: "read body: " + err.Error()})
		return
	}
	evs, errs, err := event.DecodeMany(body)
	if err != nil {
		r.metrics.Ingested.WithLabelValues("rejected").Inc()
		writeJSON(w, http.StatusBadRequest, IngestResponse{Error: err.Error()})
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
		r.metrics.Ingested.WithLabelValues("rejected").Add(float64(len(rejected)))
		writeJSON(w, http.StatusBadRequest, IngestResponse{Rejected: rejected, Error: fmt.Sprintf("%d of %d events rejected; none accepted", len(rejected), len(evs))})
		return
	}
	if b, why := r.builtBackend(); b == nil {
		writeJSON(w, http.StatusServiceUnavailable, IngestResponse{Error: "starting: " + why})
		return
	}
	now := time.Now().UTC()
	ids := make([]string, len(evs))
	for i, ev := range evs {
		if ev.Timestamp.IsZero() {
			ev.Timestamp = now
		}
		ids[i] = ev.ID
	}
	if err := r.Publish(req.Context(), evs...); err != nil {
		r.logger.ErrorContext(req.Context(), "ingest: publish failed", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, IngestResponse{Error: "bus unavailable: " + err.Error()})
		return
	}
	r.metrics.Ingested.WithLabelValues("accepted").Add(float64(len(evs)))
	writeJSON(w, http.StatusAccepted, IngestResponse{Accepted: len(evs), IDs: ids})
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
