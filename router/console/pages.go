package console

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/millrace/millrace/stores"
)

func (c *Console) loginForm(w http.ResponseWriter, req *http.Request) {
	if c.authenticated(req) {
		http.Redirect(w, req, Prefix+"observers", http.StatusSeeOther)
		return
	}
	c.render(w, http.StatusOK, "login", page{Title: "Sign in"})
}

func (c *Console) login(w http.ResponseWriter, req *http.Request) {
	if !sameOrigin(req) {
		http.Error(w, "cross-origin request refused", http.StatusForbidden)
		return
	}
	req.Body = http.MaxBytesReader(w, req.Body, 8<<10)
	if err := req.ParseForm(); err != nil || !c.checkToken(req.PostForm.Get("token")) {
		c.logger.Warn("console: login refused", "remote", req.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="millrace console"`)
		c.render(w, http.StatusUnauthorized, "login", page{Title: "Sign in", Error: "Wrong token."})
		return
	}
	c.setSessionCookie(w, req, c.sessions.start(), int(sessionTTL.Seconds()))
	c.logger.Info("console: login", "remote", req.RemoteAddr)
	http.Redirect(w, req, Prefix+"observers", http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, req *http.Request) {
	if ck, err := req.Cookie(cookieName); err == nil {
		c.sessions.end(ck.Value)
	}
	c.setSessionCookie(w, req, "", -1)
	http.Redirect(w, req, Prefix+"login", http.StatusSeeOther)
}

func (c *Console) notFound(w http.ResponseWriter, _ *http.Request) {
	c.render(w, http.StatusNotFound, "result", page{Title: "Not found", Error: "No such page."})
}

// observersData is the observers page.
type observersData struct {
	Observers []Observer
	Breakers  []Breaker
	At        time.Time
}

func (c *Console) observers(w http.ResponseWriter, req *http.Request) {
	p := page{Title: "Observers", Nav: "observers",
		Data: observersData{Observers: c.src.Observers(), Breakers: c.src.Breakers(), At: time.Now()}}
	if req.URL.Query().Get("partial") != "" {
		c.renderPartial(w, "observers", p)
		return
	}
	c.render(w, http.StatusOK, "observers", p)
}

// dlFilter is the dead letters page's filter, from its query or form.
type dlFilter struct {
	Observer string
	Reason   string
	// Error matches entries whose last error contains it (the error
	// class: "400", "timeout", "connection refused"...).
	Error string
	// Since and Until bound the last failure: an RFC 3339 time, a
	// datetime-local value, or a duration back from now ("1h").
	Since, Until string
}

func filterOf(v url.Values) dlFilter {
	return dlFilter{Observer: v.Get("observer"), Reason: v.Get("reason"), Error: strings.TrimSpace(v.Get("error")),
		Since: strings.TrimSpace(v.Get("since")), Until: strings.TrimSpace(v.Get("until"))}
}

// Query is the filter as a query string, for links back to the list.
func (f dlFilter) Query() string {
	v := url.Values{}
	for k, s := range map[string]string{"observer": f.Observer, "reason": f.Reason, "error": f.Error, "since": f.Since, "until": f.Until} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v.Encode()
}

// Empty reports whether the filter matches every entry.
func (f dlFilter) Empty() bool { return f == dlFilter{} }

// parseTime accepts an RFC 3339 time, a datetime-local value (UTC) or a
// duration back from now.
func parseTime(key, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return time.Now().Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%s %q: want a time (2026-01-02T15:04, UTC) or a duration back from now (1h)", key, s)
}

// maxListed caps the rows the page shows; "all matching" actions go
// through every entry.
const maxListed = 500

// matching returns the entries that f selects, oldest first, and the
// store's total. The store filters by observer and time; reason, error
// and until are applied here.
func (c *Console) matching(ctx context.Context, store stores.DeadLetters, f dlFilter, limit int) ([]stores.DeadLetter, int, error) {
	since, err := parseTime("since", f.Since)
	if err != nil {
		return nil, 0, err
	}
	until, err := parseTime("until", f.Until)
	if err != nil {
		return nil, 0, err
	}
	total, err := store.Count(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("count: %w", err)
	}
	all, err := store.List(ctx, stores.DeadLetterFilter{Observer: f.Observer, Since: since, Limit: max(total, 1)})
	if err != nil {
		return nil, 0, fmt.Errorf("list: %w", err)
	}
	out := all[:0]
	for _, dl := range all {
		switch {
		case f.Reason != "" && dl.Reason != f.Reason:
		case f.Error != "" && !strings.Contains(strings.ToLower(dl.Error), strings.ToLower(f.Error)):
		case !until.IsZero() && dl.LastFailure.After(until):
		default:
			out = append(out, dl)
		}
	}
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, total, nil
}

// deadLettersData is the dead letters page.
type deadLettersData struct {
	Filter    dlFilter
	Entries   []stores.DeadLetter
	Matching  int
	Total     int
	Shown     int
	Volatile  bool
	Observers []string
	Reasons   []string
}

var reasons = []string{stores.ReasonPermanent, stores.ReasonExhausted, stores.ReasonUndecodable, stores.ReasonCondition}

func (c *Console) deadLetters(w http.ResponseWriter, req *http.Request) {
	f := filterOf(req.URL.Query())
	d := deadLettersData{Filter: f, Volatile: c.src.DeadLettersVolatile(), Observers: c.src.ObserverNames(), Reasons: reasons}
	p := page{Title: "Dead letters", Nav: "deadletters", Data: &d}
	store, err := c.src.DeadLetters()
	if err != nil {
		p.Error = err.Error()
		c.render(w, http.StatusServiceUnavailable, "deadletters", p)
		return
	}
	all, total, err := c.matching(req.Context(), store, f, 0)
	if err != nil {
		p.Error = err.Error()
		c.render(w, http.StatusBadRequest, "deadletters", p)
		return
	}
	d.Total, d.Matching = total, len(all)
	// Newest first on the page; the store lists oldest first.
	slices.Reverse(all)
	d.Entries = all[:min(len(all), maxListed)]
	d.Shown = len(d.Entries)
	c.render(w, http.StatusOK, "deadletters", p)
}

// deadLetterData is the page of one entry.
type deadLetterData struct {
	Entry   stores.DeadLetter
	Payload string
}

func (c *Console) deadLetter(w http.ResponseWriter, req *http.Request) {
	p := page{Title: "Dead letter", Nav: "deadletters"}
	store, err := c.src.DeadLetters()
	if err != nil {
		p.Error = err.Error()
		c.render(w, http.StatusServiceUnavailable, "result", p)
		return
	}
	dl, err := store.Get(req.Context(), req.PathValue("id"))
	if err != nil {
		p.Error = err.Error()
		status := http.StatusBadGateway
		if errors.Is(err, stores.ErrNotFound) {
			status = http.StatusNotFound
		}
		c.render(w, status, "result", p)
		return
	}
	payload := string(dl.Payload)
	var buf bytes.Buffer
	if json.Indent(&buf, dl.Payload, "", "  ") == nil {
		payload = buf.String()
	}
	p.Data = deadLetterData{Entry: dl, Payload: payload}
	c.render(w, http.StatusOK, "deadletter", p)
}

// confirmData is the purge confirmation page.
type confirmData struct {
	Filter dlFilter
	IDs    []string
	Op     string
	Count  int
}

// resultData is the page after a replay or a purge.
type resultData struct {
	Message string
	IDs     []string
	Failed  map[string]string
	Back    string
}

// deadLetterAction replays or purges the selected entries ("id"
// fields) or every entry the filter matches. A purge without
// confirm=yes answers a confirmation page that repeats the request
// with it.
func (c *Console) deadLetterAction(w http.ResponseWriter, req *http.Request) {
	req.Body = http.MaxBytesReader(w, req.Body, 1<<20)
	p := page{Title: "Dead letters", Nav: "deadletters"}
	if err := req.ParseForm(); err != nil {
		p.Error = "form: " + err.Error()
		c.render(w, http.StatusBadRequest, "result", p)
		return
	}
	form := req.PostForm
	f := filterOf(form)
	back := Prefix + "deadletters"
	if q := f.Query(); q != "" {
		back += "?" + q
	}
	store, err := c.src.DeadLetters()
	if err != nil {
		p.Error = err.Error()
		c.render(w, http.StatusServiceUnavailable, "result", p)
		return
	}
	op := form.Get("op")
	var ids []string
	switch op {
	case "replay-selected", "purge-selected":
		ids = form["id"]
		if len(ids) == 0 {
			p.Error = "No entry selected."
			p.Data = resultData{Back: back}
			c.render(w, http.StatusBadRequest, "result", p)
			return
		}
	case "replay-matching", "purge-matching":
		all, _, err := c.matching(req.Context(), store, f, 0)
		if err != nil {
			p.Error = err.Error()
			c.render(w, http.StatusBadRequest, "result", p)
			return
		}
		for _, dl := range all {
			ids = append(ids, dl.ID)
		}
	default:
		p.Error = fmt.Sprintf("unknown operation %q", op)
		c.render(w, http.StatusBadRequest, "result", p)
		return
	}
	ctx := req.Context()
	if strings.HasPrefix(op, "purge-") {
		if form.Get("confirm") != "yes" {
			p.Title = "Confirm purge"
			p.Data = confirmData{Filter: f, IDs: form["id"], Op: op, Count: len(ids)}
			c.render(w, http.StatusOK, "confirm", p)
			return
		}
		if len(ids) > 0 {
			err = store.Delete(ctx, ids...)
		}
		if err != nil {
			p.Error = "purge: " + err.Error()
			c.render(w, http.StatusBadGateway, "result", p)
			return
		}
		c.logger.InfoContext(ctx, "console: dead letters purged", "count", len(ids), "remote", req.RemoteAddr)
		p.Data = resultData{Message: fmt.Sprintf("Purged %d dead letters.", len(ids)), Back: back}
		c.render(w, http.StatusOK, "result", p)
		return
	}
	replayed, failed, err := c.src.Replay(ctx, ids)
	if err != nil {
		p.Error = "replay: " + err.Error()
		p.Data = resultData{IDs: replayed, Failed: failed, Back: back}
		c.render(w, http.StatusBadGateway, "result", p)
		return
	}
	c.logger.InfoContext(ctx, "console: dead letters replayed", "replayed", len(replayed), "failed", len(failed), "remote", req.RemoteAddr)
	p.Data = resultData{Message: fmt.Sprintf("Replayed %d of %d dead letters.", len(replayed), len(ids)),
		IDs: replayed, Failed: failed, Back: back}
	c.render(w, http.StatusOK, "result", p)
}

// deliveriesData is the recent deliveries page.
type deliveriesData struct {
	Observers []observerDeliveries
	At        time.Time
}

type observerDeliveries struct {
	Name       string
	Deliveries []Delivery
}

func (c *Console) deliveries(w http.ResponseWriter, req *http.Request) {
	recent := c.src.Recent()
	d := deliveriesData{At: time.Now()}
	for _, name := range c.src.ObserverNames() {
		d.Observers = append(d.Observers, observerDeliveries{Name: name, Deliveries: recent[name]})
	}
	p := page{Title: "Recent deliveries", Nav: "deliveries", Data: d}
	if req.URL.Query().Get("partial") != "" {
		c.renderPartial(w, "deliveries", p)
		return
	}
	c.render(w, http.StatusOK, "deliveries", p)
}

func (c *Console) config(w http.ResponseWriter, _ *http.Request) {
	p := page{Title: "Effective config", Nav: "config"}
	b, err := c.src.ConfigTOML()
	if err != nil {
		p.Error = err.Error()
	}
	p.Data = string(b)
	c.render(w, http.StatusOK, "config", p)
}

// busData is the bus health page.
type busData struct {
	BusHealth
	ReadyError string
	At         time.Time
}

func (c *Console) bus(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := context.WithTimeout(req.Context(), 3*time.Second)
	defer cancel()
	h := c.src.Bus(ctx)
	d := busData{BusHealth: h, At: time.Now()}
	if h.Ready != nil {
		d.ReadyError = cmp.Or(h.Ready.Error(), "not ready")
	}
	p := page{Title: "Bus health", Nav: "bus", Data: d}
	if req.URL.Query().Get("partial") != "" {
		c.renderPartial(w, "bus", p)
		return
	}
	c.render(w, http.StatusOK, "bus", p)
}
