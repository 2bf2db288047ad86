package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/tracing"
)

// Webhook is the webhook action. It is safe for concurrent use; Close
// releases its idle connections.
type Webhook struct {
	method   string
	url      string             // the literal URL, when urlTmpl is nil
	urlEnv   string             // the variable url came from, if any
	urlTmpl  *handlers.Template // the URL template, if the URL has actions
	static   http.Header        // literal headers, canonical names
	headers  []header           // templated headers
	body     *handlers.Template // nil: the envelope, or no body
	envelope bool               // send the envelope when body is nil
	secret   []byte             // nil: unsigned
	macs     sync.Pool          // of hash.Hash keyed with secret
	hash     string             // the action hash, half of the key
	timeout  time.Duration
	tr       *http.Transport
	endpoint string // BreakerKey
}

type header struct {
	name string
	t    *handlers.Template
}

var (
	_ handlers.Action   = (*Webhook)(nil)
	_ io.Closer         = (*Webhook)(nil)
	_ handlers.Renderer = (*Webhook)(nil)
)

// Register adds the "webhook" type to r.
func Register(r *handlers.Registry) error { return handlers.Register(r, "webhook", New) }

// New builds the action: it reads url_env and secret_env, compiles the
// templates and opens one connection pool for the action.
func New(_ context.Context, c Config, deps handlers.Deps) (handlers.Action, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	w := &Webhook{hash: deps.ActionHash, static: http.Header{}}
	w.method, _ = normMethod(c.Method)
	switch {
	case c.URLEnv != "":
		u, err := config.Secret("", c.URLEnv)
		if err != nil {
			return nil, fmt.Errorf("url_env: %w", err)
		}
		if err := checkURL(u); err != nil {
			return nil, fmt.Errorf("url_env: the value of %s %w", c.URLEnv, err)
		}
		w.url, w.urlEnv = u, c.URLEnv
	case isTemplate(c.URL):
		t, err := handlers.CompileTemplate("url", c.URL)
		if err != nil {
			return nil, fmt.Errorf("url: %w", err)
		}
		w.urlTmpl = t
	default:
		w.url = c.URL
	}
	for _, name := range sortedKeys(c.Headers) {
		v := c.Headers[name]
		key := http.CanonicalHeaderKey(name)
		if !isTemplate(v) {
			w.static[key] = []string{v}
			continue
		}
		t, err := handlers.CompileTemplate("headers."+name, v)
		if err != nil {
			return nil, fmt.Errorf("headers.%s: %w", name, err)
		}
		w.headers = append(w.headers, header{name: key, t: t})
	}
	if c.Body != "" {
		t, err := c.compileBody()
		if err != nil {
			return nil, fmt.Errorf("body: %w", err)
		}
		w.body = t
	} else {
		w.envelope = w.method != http.MethodGet
	}
	if (w.body != nil || w.envelope) && !w.configured("Content-Type") {
		ct := "application/json"
		if w.body != nil && c.BodyFormat == "text" {
			ct = "text/plain; charset=utf-8"
		}
		w.static["Content-Type"] = []string{ct}
	}
	if !w.configured("User-Agent") {
		w.static["User-Agent"] = []string{"millrace"}
	}
	if c.SecretEnv != "" {
		s, err := config.Secret("", c.SecretEnv)
		if err != nil {
			return nil, fmt.Errorf("secret_env: %w", err)
		}
		key, err := DecodeSecret(s)
		if err != nil {
			return nil, fmt.Errorf("secret_env: the value of %s: %w", c.SecretEnv, err)
		}
		w.setSecret(key)
	}
	w.endpoint = endpoint(c.URL, w.url)
	w.timeout = c.Timeout.D()
	w.tr = NewTransport(&Guard{AllowPrivate: c.AllowPrivate})
	if deps.Config != nil {
		// The idle pool must hold a connection per request in flight, or
		// the requests beyond it open new ones: at most one per event the
		// router handles at once.
		w.tr.MaxIdleConnsPerHost = max(w.tr.MaxIdleConnsPerHost, deps.Config.Router.MaxInFlight)
		w.tr.MaxIdleConns = max(w.tr.MaxIdleConns, w.tr.MaxIdleConnsPerHost)
	}
	if c.AllowPrivate && deps.Logger != nil {
		deps.Logger.Warn("webhook: allow_private is on; requests may reach loopback and private addresses")
	}
	return w, nil
}

// configured reports whether a static or templated header sets name.
func (w *Webhook) configured(name string) bool {
	if _, ok := w.static[name]; ok {
		return true
	}
	for _, h := range w.headers {
		if h.name == name {
			return true
		}
	}
	return false
}

// DecodeSecret turns a signing secret as configured into the HMAC key:
// "whsec_<base64>" (the Standard Webhooks form) is decoded, anything else
// is used as raw bytes.
func DecodeSecret(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("the signing secret is empty")
	}
	rest, ok := strings.CutPrefix(s, "whsec_")
	if !ok {
		return []byte(s), nil
	}
	b, err := base64.StdEncoding.DecodeString(rest)
	if err != nil || len(b) == 0 {
		return nil, errors.New("a whsec_ secret must be standard base64 after the prefix")
	}
	return b, nil
}

// Key returns the delivery key of an event and an action, sent as
// webhook-id and Idempotency-Key: the same on every retry of that event
// by that action, different for another event or another action.
func Key(eventID, actionHash string) string {
	if actionHash == "" {
		return eventID
	}
	return eventID + ":" + actionHash
}

// Execute sends one request for ev. A 2xx answer is success; 408, 425,
// 429, 5xx and network errors are transient (a Retry-After header gives a
// *handlers.RetryAfterError); any other answer, a refused destination or
// an event the templates cannot render is permanent.
func (w *Webhook) Execute(ctx context.Context, ev *event.Event) error {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	req, _, err := w.request(ctx, ev, time.Now())
	if err != nil {
		return err
	}
	if err := Do(w.tr, req); err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	return nil
}

// Render returns the request Execute would send for ev, signed with the
// event's own timestamp as the send time (now when it has none), so that
// the same event renders the same request. A URL read from url_env shows
// only its endpoint; credentials in the URL's query and in headers such
// as Authorization are masked, as `millrace config` masks them.
func (w *Webhook) Render(ctx context.Context, ev *event.Event) (handlers.Effect, error) {
	now := ev.Timestamp
	if now.IsZero() {
		now = time.Now()
	}
	req, body, err := w.request(ctx, ev, now)
	if err != nil {
		return handlers.Effect{}, err
	}
	e := handlers.Effect{Kind: "webhook", Method: req.Method, Target: config.MaskURL(req.URL.String()), Body: string(body),
		Headers: make(map[string]string, len(req.Header))}
	if w.urlEnv != "" {
		e.Target = handlers.URLEndpoint(w.url) + "/… (" + w.urlEnv + ")"
	}
	for k, v := range req.Header {
		if k != "Webhook-Signature" && config.SecretHeader(k) {
			e.Headers[k] = config.Masked
			continue
		}
		e.Headers[k] = strings.Join(v, ", ")
	}
	return e, nil
}

// request builds the signed request for ev, sent at now, and returns it
// with its body. Every error is permanent.
func (w *Webhook) request(ctx context.Context, ev *event.Event, now time.Time) (*http.Request, []byte, error) {
	target := w.url
	if w.urlTmpl != nil {
		s, err := w.urlTmpl.Render(ev)
		if err != nil {
			return nil, nil, handlers.Permanent(fmt.Errorf("webhook: render url: %w", err))
		}
		if err := checkURL(s); err != nil {
			return nil, nil, handlers.Permanent(fmt.Errorf("webhook: the rendered url %w", err))
		}
		target = s
	}
	var body []byte
	switch {
	case w.body != nil:
		var b bytes.Buffer
		if err := w.body.Execute(&b, ev); err != nil {
			return nil, nil, handlers.Permanent(fmt.Errorf("webhook: render body: %w", err))
		}
		body = b.Bytes()
	case w.envelope:
		b, err := event.Encode(ev)
		if err != nil {
			return nil, nil, handlers.Permanent(fmt.Errorf("webhook: encode event: %w", err))
		}
		body = b
	}
	var rd io.Reader = http.NoBody
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, w.method, target, rd)
	if err != nil {
		// The parse error would quote the URL, which may hold a token.
		return nil, nil, handlers.Permanent(fmt.Errorf("webhook: %s: the url is not valid", w.method))
	}
	h := make(http.Header, len(w.static)+len(w.headers)+4)
	for k, v := range w.static {
		h[k] = v
	}
	for _, x := range w.headers {
		v, err := x.t.Render(ev)
		if err != nil {
			return nil, nil, handlers.Permanent(fmt.Errorf("webhook: render header %s: %w", x.name, err))
		}
		if !validHeaderValue(v) {
			return nil, nil, handlers.Permanent(fmt.Errorf("webhook: header %s renders control characters (CR, LF or NUL)", x.name))
		}
		h[x.name] = []string{v}
	}
	key := Key(ev.ID, w.hash)
	ts := strconv.FormatInt(now.Unix(), 10)
	h["Webhook-Id"] = []string{key}
	h["Webhook-Timestamp"] = []string{ts}
	h["Idempotency-Key"] = []string{key}
	if w.secret != nil {
		h["Webhook-Signature"] = []string{w.sign(key, ts, body)}
	}
	// The action's span, when tracing is on: the receiver joins the
	// event's trace.
	tracing.InjectHTTP(ctx, h)
	req.Header = h
	return req, body, nil
}

// setSecret keys the signatures; MACs are pooled because hmac.New costs
// two hash states and a key schedule per call.
func (w *Webhook) setSecret(key []byte) {
	w.secret = key
	w.macs.New = func() any { return hmac.New(sha256.New, key) }
}

// sign returns "v1,<base64 HMAC-SHA256 of id.timestamp.body>".
func (w *Webhook) sign(id, ts string, body []byte) string {
	m := w.macs.Get().(hash.Hash)
	m.Reset()
	pre := make([]byte, 0, len(id)+len(ts)+2)
	pre = append(append(append(append(pre, id...), '.'), ts...), '.')
	m.Write(pre)
	m.Write(body)
	var sum [sha256.Size]byte
	mac := m.Sum(sum[:0])
	w.macs.Put(m)
	out := make([]byte, 3+base64.StdEncoding.EncodedLen(len(mac)))
	copy(out, "v1,")
	base64.StdEncoding.Encode(out[3:], mac)
	return string(out)
}

// BreakerKey names the host the action posts to, scheme://host[:port],
// so that every action posting there shares one circuit breaker; ""
// (a breaker of its own) when a template picks the host.
func (w *Webhook) BreakerKey() string { return w.endpoint }

// endpoint is the endpoint of the configured URL: resolved, or, for a
// template, its literal part up to the first action when that part
// holds the whole host.
func endpoint(configured, resolved string) string {
	if resolved != "" {
		return handlers.URLEndpoint(resolved)
	}
	lit, _, _ := strings.Cut(configured, "{{")
	_, rest, ok := strings.Cut(lit, "://")
	if !ok || !strings.Contains(rest, "/") {
		return "" // the host, or its port, may still change
	}
	return handlers.URLEndpoint(lit)
}

// Close releases the idle connections. It is safe to call more than once.
func (w *Webhook) Close() error {
	w.tr.CloseIdleConnections()
	return nil
}
