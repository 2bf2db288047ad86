package router

import (
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/tracing"
)

// tracedIngest is POST /v1/events inside a server span that continues
// the request's traceparent: the producer's trace then goes on through
// the bus to the observers and the webhooks they send.
func (r *Router) tracedIngest(w http.ResponseWriter, req *http.Request) {
	ctx := tracing.ExtractHTTP(req.Context(), req.Header)
	ctx, span := r.tracer.Start(ctx, "POST /v1/events", trace.SpanKindServer,
		attribute.String("http.request.method", req.Method), attribute.String("url.path", req.URL.Path))
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	r.ingest(sw, req.WithContext(ctx))
	span.SetAttributes(attribute.Int("http.response.status_code", sw.status))
	var err error
	if sw.status >= 400 {
		err = httpError(sw.status)
	}
	tracing.End(span, err)
}

// statusWriter remembers the status an ingest answered with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

type httpError int

func (e httpError) Error() string { return http.StatusText(int(e)) }

// walSource tells whether the source named name captures from the WAL,
// whose capture spans give the commit LSN rather than a change-log
// position.
func (r *Router) walSource(name string) bool {
	for _, s := range r.cfg.Sources {
		if s.Name == name {
			return s.Capture == config.CaptureWAL
		}
	}
	return false
}
