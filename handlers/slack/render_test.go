package slack_test

import (
	"context"
	"strings"
	"testing"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/handlers"
)

// Render shows the payload Execute posts, and of the URL, a credential,
// only its endpoint and variable.
func TestRenderIsWhatExecutePosts(t *testing.T) {
	t.Parallel()
	srv := newSlack(t, nil)
	name := setEnv(t, srv.URL+"/services/T0/B0/S3CR3T")
	a := build(t, config.Action{"type": "slack", "url_env": name, "allow_private": true,
		"text": "Order {{ .entity_id }} is {{ .data.status }}", "channel": "#orders"})
	ev := newEvent()
	e, err := a.(handlers.Renderer).Render(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(srv.payloads()); n != 0 {
		t.Fatalf("Render posted %d message(s)", n)
	}
	if err := a.Execute(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if got := string(srv.payloads()[0]); e.Body != got || e.Method != "POST" || e.Headers["Content-Type"] != "application/json" {
		t.Errorf("rendered %+v, posted %s", e, got)
	}
	if strings.Contains(e.Target, "S3CR3T") || e.Target != srv.URL+"/… ("+name+")" {
		t.Errorf("target %q", e.Target)
	}
}
