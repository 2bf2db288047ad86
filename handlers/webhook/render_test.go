package webhook_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/handlers"
)

// Render shows the request Execute sends: same method, URL, body and
// headers, and a signature that verifies; only the send time (and so
// the signature) may differ. Credentials in the URL and headers are
// masked.
func TestRenderIsWhatExecuteSends(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	secret := "whsec_" + "c2VjcmV0LWtleS0xMjM0NTY3OA=="
	a := build(t, config.Action{
		"type": "webhook", "url": rc.URL + "/hook/{{ .entity_id }}?token=s3cret", "allow_private": true,
		"secret_env": setEnv(t, secret),
		"headers":    map[string]any{"X-Order": "{{ .data.status }}", "Authorization": "Bearer t0ken"},
		"body":       `{"order": "{{ .entity_id }}", "total": {{ .data.total }}}`,
	})
	ev := newEvent()
	e, err := a.(handlers.Renderer).Render(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Execute(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	got := rc.only(t)
	if e.Kind != "webhook" || e.Method != got.Method || e.Target != rc.URL+"/hook/42?token=REDACTED" || e.Body != string(got.Body) {
		t.Errorf("rendered %+v, sent %s %s?%s %s", e, got.Method, got.Path, got.Query, got.Body)
	}
	h := http.Header{}
	for k, v := range e.Headers {
		h.Set(k, v)
	}
	for k := range got.Header {
		switch k {
		case "Webhook-Timestamp", "Webhook-Signature", "Accept-Encoding", "Content-Length":
			continue
		case "Authorization":
			if h.Get(k) != config.Masked {
				t.Errorf("rendered %s: %q, want it masked", k, h.Get(k))
			}
			continue
		}
		if h.Get(k) != got.Header.Get(k) {
			t.Errorf("header %s: rendered %q, sent %q", k, h.Get(k), got.Header.Get(k))
		}
	}
	// The rendered request is signed at the event's time.
	if err := verify(secret, h, []byte(e.Body), ev.Timestamp, time.Second); err != nil {
		t.Errorf("rendered signature: %v", err)
	}
}

// A URL read from url_env, a credential, renders as its endpoint only.
func TestRenderHidesURLEnv(t *testing.T) {
	t.Parallel()
	name := setEnv(t, "https://hooks.example.com/T0KEN/abc")
	a := build(t, config.Action{"type": "webhook", "url_env": name})
	e, err := a.(handlers.Renderer).Render(context.Background(), newEvent())
	if err != nil {
		t.Fatal(err)
	}
	if e.Target != "https://hooks.example.com/… ("+name+")" {
		t.Errorf("target %q", e.Target)
	}
}
