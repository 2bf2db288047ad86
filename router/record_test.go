package router

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/stores"
)

// getLines sends an admin GET and returns the status, the event ids of
// the body's lines, and the answer (its body read, its trailers in).
func getLines(t *testing.T, url, token string) (int, []string, *http.Response) {
	t.Helper()
	resp := adminDo(t, http.MethodGet, url, token, nil)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil, resp
	}
	var ids []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		ev, err := event.Decode(sc.Bytes())
		if err != nil {
			t.Fatalf("GET %s: line %d: %v", url, len(ids)+1, err)
		}
		ids = append(ids, ev.ID)
	}
	return resp.StatusCode, ids, resp
}

// ingestEvents posts n Order events, one entity each, and returns them.
func ingestEvents(t *testing.T, addr string, n int) []*event.Event {
	t.Helper()
	evs := make([]*event.Event, n)
	var raws []json.RawMessage
	for i := range evs {
		ev, _ := testEvent(t, "Order")
		ev.EntityID = strconv.Itoa(i)
		b, err := event.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		evs[i], raws = ev, append(raws, b)
	}
	var res IngestResponse
	if code := adminCall(t, http.MethodPost, addr+"/v1/events", "", raws, &res); code != http.StatusAccepted {
		t.Fatalf("POST /v1/events = %d %+v", code, res)
	}
	return evs
}

// TestAdminRecord: GET /v1/record needs the admin token; it writes the
// events on the embedded bus as JSON lines, in order, whole or picked by
// since, from_seq and limit; the router's consumer keeps getting every
// event once while and after it reads.
func TestAdminRecord(t *testing.T) {
	_, addr, token, rec := adminRouter(t)
	evs := ingestEvents(t, addr, 30)
	for _, ev := range evs {
		rec.wait(t, "a", ev.ID)
	}

	for _, tok := range []string{"", "wrong"} {
		if code, _, resp := getLines(t, addr+"/v1/record", tok); code != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("GET /v1/record with token %q = %d; want 401 with a challenge", tok, code)
		}
	}

	ids := func(evs []*event.Event) []string {
		out := make([]string, len(evs))
		for i, ev := range evs {
			out[i] = ev.ID
		}
		return out
	}
	future := url.QueryEscape(time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	for _, c := range []struct {
		query string
		want  []string
	}{
		{"", ids(evs)},
		{"?limit=10", ids(evs[:10])},
		{"?limit=0", ids(evs)},
		{"?from_seq=25", ids(evs[25:])},
		{"?from_seq=25&limit=2", ids(evs[25:27])},
		{"?since=1h", ids(evs)},
		{"?since=" + future, nil},
	} {
		code, got, resp := getLines(t, addr+"/v1/record"+c.query, token)
		if code != http.StatusOK {
			t.Errorf("GET /v1/record%s = %d", c.query, code)
			continue
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("GET /v1/record%s: %d events %v; want %d %v", c.query, len(got), got, len(c.want), c.want)
		}
		if resp.Header.Get("Content-Type") != ndjson || resp.Trailer.Get(RecordEventsHeader) != strconv.Itoa(len(c.want)) ||
			resp.Trailer.Get(RecordErrorHeader) != "" {
			t.Errorf("GET /v1/record%s: content type %q, trailers %v; want %s, %d events and no error",
				c.query, resp.Header.Get("Content-Type"), resp.Trailer, ndjson, len(c.want))
		}
	}
	for _, q := range []string{"?since=1h&from_seq=3", "?from_seq=-1", "?limit=x", "?since=yesterday", "?follow=x", "?follow=25h", "?follow=-1s"} {
		if code, _, _ := getLines(t, addr+"/v1/record"+q, token); code != http.StatusBadRequest {
			t.Errorf("GET /v1/record%s = %d; want 400", q, code)
		}
	}

	// Recording while events arrive: the consumer still gets each once.
	done := make(chan []*event.Event)
	go func() { done <- ingestEvents(t, addr, 200) }()
	for range 5 {
		if code, _, _ := getLines(t, addr+"/v1/record", token); code != http.StatusOK {
			t.Errorf("GET /v1/record during traffic = %d", code)
		}
	}
	more := <-done
	for _, ev := range more {
		rec.wait(t, "a", ev.ID)
		rec.wait(t, "b", ev.ID)
	}
	time.Sleep(500 * time.Millisecond) // room for a redelivery to show
	for _, ev := range append(evs, more...) {
		if na, nb := rec.count("a", ev.ID), rec.count("b", ev.ID); na != 1 || nb != 1 {
			t.Errorf("event %s reached observer a %d and b %d times; want once each", ev.ID, na, nb)
		}
	}
	if _, got, _ := getLines(t, addr+"/v1/record", token); !slices.Equal(got, ids(append(evs, more...))) {
		t.Errorf("GET /v1/record after the traffic: %d events; want the %d ingested, in order", len(got), len(evs)+len(more))
	}
}

// TestAdminDeadLetterExport: GET /v1/dlq/export writes each dead-lettered
// event once, oldest first, filtered by observer and since, and counts
// the undecodable payloads and the repeats it skipped.
func TestAdminDeadLetterExport(t *testing.T) {
	r, addr, token, _ := adminRouter(t)
	ctx := context.Background()
	store := r.backend.DeadLetters
	ev1, p1 := testEvent(t, "Order")
	ev2, p2 := testEvent(t, "Order")
	indented, err := json.MarshalIndent(json.RawMessage(p2), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour).UTC()
	for _, dl := range []stores.DeadLetter{
		{EventID: ev1.ID, Observer: "a", Reason: stores.ReasonExhausted, FirstFailure: old, LastFailure: old, Topic: "events", Payload: p1},
		{EventID: ev1.ID, Observer: "b", Reason: stores.ReasonExhausted, Topic: "events", Payload: p1},
		{Reason: stores.ReasonUndecodable, Error: "invalid event", Topic: "events", Payload: []byte{0xff, 0x00, 'x'}},
		{EventID: ev2.ID, Observer: "b", Reason: stores.ReasonPermanent, Topic: "events", Payload: indented},
	} {
		if _, err := store.Put(ctx, dl); err != nil {
			t.Fatal(err)
		}
	}
	if code, _, _ := getLines(t, addr+"/v1/dlq/export", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /v1/dlq/export without a token = %d; want 401", code)
	}
	for _, c := range []struct {
		query                 string
		want                  []string
		undecodable, repeated string
	}{
		{"", []string{ev1.ID, ev2.ID}, "1", "1"},
		{"?observer=b", []string{ev1.ID, ev2.ID}, "0", "0"},
		{"?observer=a", []string{ev1.ID}, "0", "0"},
		{"?since=1h", []string{ev1.ID, ev2.ID}, "1", "0"},
	} {
		code, got, resp := getLines(t, addr+"/v1/dlq/export"+c.query, token)
		if code != http.StatusOK || !slices.Equal(got, c.want) {
			t.Errorf("GET /v1/dlq/export%s = %d %v; want %v", c.query, code, got, c.want)
			continue
		}
		if resp.Header.Get(RecordEventsHeader) != strconv.Itoa(len(c.want)) || resp.Header.Get(ExportUndecodableHeader) != c.undecodable ||
			resp.Header.Get(ExportRepeatedHeader) != c.repeated {
			t.Errorf("GET /v1/dlq/export%s: headers %v; want %d events, %s undecodable, %s repeated",
				c.query, resp.Header, len(c.want), c.undecodable, c.repeated)
		}
	}
	if n, err := store.Count(ctx); err != nil || n != 4 {
		t.Errorf("after the exports the store holds %d entries (%v); want the 4, untouched", n, err)
	}
}
