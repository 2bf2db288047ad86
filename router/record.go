package router

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/topologies"
)

// The admin routes that write events as JSON lines, one envelope per
// line, the input of `millrace try`. Both need the admin token, as the
// /v1/dlq routes do (admin.go).
//
//	GET /v1/record?since=&from_seq=&limit=&follow=  the events on the bus (topologies whose bus is in the process)
//	GET /v1/dlq/export?observer=&since=     the events of the dead letters
const (
	// RecordEventsHeader is the trailer of GET /v1/record with the number
	// of events written, and the header of GET /v1/dlq/export with it.
	RecordEventsHeader = "Millrace-Events"
	// RecordErrorHeader is the trailer of GET /v1/record that says why
	// the body stopped early; it is absent when the body is whole.
	RecordErrorHeader = "Millrace-Error"
	// ExportUndecodableHeader counts the dead letters GET /v1/dlq/export
	// skipped because their payload is not an event.
	ExportUndecodableHeader = "Millrace-Skipped-Undecodable"
	// ExportRepeatedHeader counts the dead letters GET /v1/dlq/export
	// skipped because an earlier one holds the same event (one event
	// dead-lettered for several observers).
	ExportRepeatedHeader = "Millrace-Skipped-Repeated"
)

// ndjson is the content type of the JSON-lines answers.
const ndjson = "application/x-ndjson"

// maxFollow bounds the tap of GET /v1/record?follow=: a request holds a
// consumer on the bus while it lasts.
const maxFollow = 24 * time.Hour

// record streams the events on the bus, oldest first. Errors before the
// first event get a status (400, 501, 502, 503); an error after it ends
// the body early, and the RecordErrorHeader trailer says why, so a
// client can tell a cut recording from a whole one.
func (r *Router) record(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	var span topologies.RecordSpan
	var err error
	if span.Since, err = parseSince(q.Get("since")); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody(err.Error()))
		return
	}
	if s := q.Get("from_seq"); s != "" {
		if span.FromSeq, err = strconv.ParseUint(s, 10, 64); err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody(fmt.Sprintf("from_seq %q: want a stream sequence (0 or more)", s)))
			return
		}
	}
	if span.FromSeq > 0 && !span.Since.IsZero() {
		writeJSON(w, http.StatusBadRequest, errorBody("since and from_seq cannot be used together"))
		return
	}
	if s := q.Get("limit"); s != "" {
		if span.Limit, err = strconv.Atoi(s); err != nil || span.Limit < 0 {
			writeJSON(w, http.StatusBadRequest, errorBody(fmt.Sprintf("limit %q: want 0 (all) or more", s)))
			return
		}
	}
	if s := q.Get("follow"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 || d > maxFollow {
			writeJSON(w, http.StatusBadRequest, errorBody(fmt.Sprintf("follow %q: want a duration up to %s", s, maxFollow)))
			return
		}
		span.Until = time.Now().Add(d)
	}
	b, why := r.builtBackend()
	if b == nil {
		writeJSON(w, http.StatusServiceUnavailable, errorBody("starting: "+why))
		return
	}
	if b.Record == nil {
		writeJSON(w, http.StatusNotImplemented, errorBody("the "+r.cfg.Topology+
			" topology's bus is recorded from outside the process: millrace record -c FILE reads it directly"))
		return
	}
	w.Header().Set("Content-Type", ndjson)
	w.Header().Set("Trailer", RecordEventsHeader+", "+RecordErrorHeader)
	bw := bufio.NewWriter(w)
	n := 0
	rc := http.NewResponseController(w)
	err = b.Record(req.Context(), span, func(p []byte) error {
		n++
		if err := writeLine(bw, p); err != nil {
			return err
		}
		if span.Until.IsZero() {
			return nil
		}
		// A tap sends each event as it comes, so that a client (or a
		// proxy's idle timeout) sees the traffic while it lasts.
		if err := bw.Flush(); err != nil {
			return err
		}
		return rc.Flush()
	})
	if err != nil && n == 0 {
		w.Header().Del("Trailer")
		r.logger.ErrorContext(req.Context(), "record failed", "err", err)
		writeJSON(w, http.StatusBadGateway, errorBody("record: "+err.Error()))
		return
	}
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	w.Header().Set(RecordEventsHeader, strconv.Itoa(n))
	if err != nil {
		r.logger.ErrorContext(req.Context(), "record cut short", "events", n, "err", err)
		w.Header().Set(RecordErrorHeader, oneLineHeader(err.Error()))
		return
	}
	r.logger.InfoContext(req.Context(), "events recorded", "events", n)
}

// dlqExport writes the event of each dead letter (of one observer,
// failed last since a time), oldest first, once per event: an event
// dead-lettered for two observers is one line. Payloads that are not
// events are skipped and counted in a header.
func (r *Router) dlqExport(w http.ResponseWriter, req *http.Request) {
	f, err := deadLetterFilter(req.URL.Query())
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody(err.Error()))
		return
	}
	store := r.store(w)
	if store == nil {
		return
	}
	// List has no cursor: ask for every entry at once. The store's own
	// bound (dlq.max_entries) bounds the answer.
	total, err := store.Count(req.Context())
	if err != nil {
		r.storeError(w, req, "count", err)
		return
	}
	f.Limit = max(total, 1)
	dls, err := store.List(req.Context(), f)
	if err != nil {
		r.storeError(w, req, "list", err)
		return
	}
	var body bytes.Buffer
	seen := map[string]bool{}
	events, undecodable, repeated := 0, 0, 0
	for _, dl := range dls {
		ev, err := event.Decode(dl.Payload)
		if err != nil {
			undecodable++
			continue
		}
		if seen[ev.ID] {
			repeated++
			continue
		}
		seen[ev.ID] = true
		events++
		_ = writeLine(&body, dl.Payload) // a bytes.Buffer does not fail
	}
	w.Header().Set("Content-Type", ndjson)
	w.Header().Set(RecordEventsHeader, strconv.Itoa(events))
	w.Header().Set(ExportUndecodableHeader, strconv.Itoa(undecodable))
	w.Header().Set(ExportRepeatedHeader, strconv.Itoa(repeated))
	w.WriteHeader(http.StatusOK)
	_, _ = body.WriteTo(w)
	r.logger.InfoContext(req.Context(), "dead letters exported", "events", events, "undecodable", undecodable, "repeated", repeated)
}

// lineWriter is what writeLine writes to.
type lineWriter interface {
	Write(p []byte) (int, error)
	WriteByte(c byte) error
}

// writeLine writes an envelope and a newline. A payload that spans
// lines (indented JSON) is compacted first, so that it stays one line.
func writeLine(w lineWriter, p []byte) error {
	if bytes.ContainsAny(p, "\r\n") {
		var c bytes.Buffer
		if json.Compact(&c, p) == nil {
			p = c.Bytes()
		}
	}
	if _, err := w.Write(p); err != nil {
		return err
	}
	return w.WriteByte('\n')
}

// oneLineHeader keeps an error message a valid header value.
func oneLineHeader(s string) string {
	return string(bytes.Map(func(r rune) rune {
		if r < ' ' {
			return ' '
		}
		return r
	}, []byte(s)))
}
