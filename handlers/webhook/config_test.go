package webhook_test

import (
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/handlers/webhook"
)

func TestDefaults(t *testing.T) {
	t.Parallel()
	spec, err := registry(t).Decode(path0, config.Action{"type": "webhook", "url": "https://example.com/h"})
	if err != nil {
		t.Fatal(err)
	}
	c := spec.Config.(webhook.Config)
	if c.Method != "POST" || c.Timeout.D() != webhook.DefaultTimeout || c.AllowPrivate || c.Body != "" || c.BodyFormat != "json" {
		t.Errorf("defaults = %+v; want POST, 10s, allow_private false, envelope body, body_format json", c)
	}
}

// Each case starts from a valid section and changes one thing; the error
// must name the key path under the action.
func TestValidate(t *testing.T) {
	t.Parallel()
	valid := config.Action{"type": "webhook", "url": "https://example.com/{{.entity_type}}"}
	for _, tc := range []struct {
		name   string
		change config.Action
		drop   string
		path   string
		msg    string
	}{
		{name: "missing url", drop: "url", path: ".url", msg: "required"},
		{name: "url and url_env", change: config.Action{"url_env": "HOOK_URL"}, path: ".url", msg: "not both"},
		{name: "url does not parse", change: config.Action{"url": "https://example.com/{{.entity_type"}, path: ".url", msg: "does not parse"},
		{name: "url not http", change: config.Action{"url": "ftp://example.com/x"}, path: ".url", msg: "http or https"},
		{name: "url relative", change: config.Action{"url": "/hook"}, path: ".url", msg: "http or https"},
		{name: "bad method", change: config.Action{"method": "FETCH"}, path: ".method", msg: "one of"},
		{name: "body does not parse", change: config.Action{"body": "{{.data"}, path: ".body", msg: "does not parse"},
		{name: "body not JSON", change: config.Action{"body": `{"a": "{{.entity_id}}}`}, path: ".body", msg: "not closed"},
		{name: "text body not JSON", change: config.Action{"body": `{{.event_type}} {{.entity_id}}`}, path: ".body", msg: "JSON"},
		{name: "bad body_format", change: config.Action{"body_format": "xml"}, path: ".body_format", msg: "json, text"},
		{name: "header does not parse", change: config.Action{"headers": map[string]any{"X-A": "{{end}}"}}, path: ".headers.X-A", msg: "does not parse"},
		{name: "bad header name", change: config.Action{"headers": map[string]any{"X A": "v"}}, path: ".headers.X A", msg: "header name"},
		{name: "reserved header", change: config.Action{"headers": map[string]any{"webhook-signature": "v1,x"}}, path: ".headers.webhook-signature", msg: "set by the action"},
		{name: "header with CRLF", change: config.Action{"headers": map[string]any{"X-A": "a\r\nB: c"}}, path: ".headers.X-A", msg: "control characters"},
		{name: "zero timeout", change: config.Action{"timeout": "0s"}, path: ".timeout", msg: "positive"},
		{name: "bad timeout", change: config.Action{"timeout": "ten"}, path: ".timeout", msg: "duration"},
		{name: "unknown key", change: config.Action{"methd": "PUT"}, path: ".methd", msg: `did you mean "method"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			raw := maps.Clone(valid)
			delete(raw, tc.drop)
			maps.Copy(raw, tc.change)
			_, err := registry(t).Decode(path0, raw)
			if err == nil {
				t.Fatalf("Decode(%v) = nil; want an error at %s", raw, path0+tc.path)
			}
			var ce *config.Error
			found := false
			for _, e := range config.Errors(err) {
				if errors.As(e, &ce) && ce.Path == path0+tc.path && strings.Contains(ce.Msg, tc.msg) {
					found = true
				}
			}
			if !found {
				t.Fatalf("Decode(%v) = %v; want an error at %s containing %q", raw, err, path0+tc.path, tc.msg)
			}
		})
	}
	if _, err := registry(t).Decode(path0, valid); err != nil {
		t.Fatalf("the valid section does not decode: %v", err)
	}
}

// Validate reports every problem at once.
func TestValidateReportsAll(t *testing.T) {
	t.Parallel()
	_, err := registry(t).Decode(path0, config.Action{"type": "webhook", "method": "FETCH", "body": "{{", "timeout": "-1s"})
	if n := len(config.Errors(err)); n != 4 {
		t.Fatalf("got %d errors (%v); want 4: url, method, body, timeout", n, err)
	}
}
