package email_test

import (
	"context"
	"strings"
	"testing"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/handlers"
)

// Render shows the message Execute sends: its headers and body, and the
// server it goes to; it connects to nothing.
func TestRenderIsWhatExecuteSends(t *testing.T) {
	t.Parallel()
	srv := startSMTP(t, nil, false)
	a := build(t, smtpConfig(srv.port()), config.Action{
		"to":      []any{"{{.data.email}}"},
		"cc":      []any{"audit@example.com"},
		"subject": "Order {{.entity_id}} is {{.data.status}}",
		"body":    "Hello {{.data.name}}, your order is {{.data.status}}.\n",
	})
	ev := order(evID)
	e, err := a.(handlers.Renderer).Render(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(srv.received()); n != 0 {
		t.Fatalf("Render sent %d message(s)", n)
	}
	if err := a.Execute(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	p := parse(t, srv.received()[0].data)
	if e.Kind != "email" || e.Target != a.(interface{ BreakerKey() string }).BreakerKey() {
		t.Errorf("effect %+v", e)
	}
	if got := strings.ReplaceAll(p.body, "\r\n", "\n"); e.Body != got {
		t.Errorf("rendered body %q, sent %q", e.Body, got)
	}
	for _, h := range []string{"Subject", "Message-Id"} {
		if e.Headers[h] != p.header.Get(h) {
			t.Errorf("%s: rendered %q, sent %q", h, e.Headers[h], p.header.Get(h))
		}
	}
	for h, want := range map[string]string{"To": "ann@example.com", "Cc": "audit@example.com", "From": "millrace@example.com",
		"Content-Type": "text/plain"} {
		if !strings.Contains(e.Headers[h], want) || !strings.Contains(p.header.Get(h), want) {
			t.Errorf("%s: rendered %q, sent %q, want both to hold %q", h, e.Headers[h], p.header.Get(h), want)
		}
	}
}
