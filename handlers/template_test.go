package handlers_test

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"text/template"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/internal/samples"
)

func render(t *testing.T, src string, ev *event.Event) string {
	t.Helper()
	tm, err := handlers.CompileTemplate("t", src)
	if err != nil {
		t.Fatalf("CompileTemplate(%q): %v", src, err)
	}
	out, err := tm.Render(ev)
	if err != nil {
		t.Fatalf("Render(%q): %v", src, err)
	}
	return out
}

func TestTemplateView(t *testing.T) {
	ev := samples.Event(t, samples.OrderUpdate)
	for src, want := range map[string]string{
		`{{.id}}`:                          "7d3f1b2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
		`{{.event_type}} {{.entity_type}}`: "UPDATE Order",
		`{{.entity_id}}/{{.user_id}}/{{.tenant_id}}/{{.source}}/{{.seq}}`: "42/u-7/acme/orders_db/981",
		`{{.timestamp}}`:   "2024-05-06T07:08:09Z",
		`{{.data.status}}`: "shipped",
		`{{.data.total}} {{.data.price}} {{.data.big}}`:      "100 100.5 9007199254740993",
		`{{.data.customer.address.city}}`:                    "Paris",
		`{{index .data "first.last"}}`:                       "dotted key",
		`{{.changes.status.old}} -> {{.changes.status.new}}`: "paid -> shipped",
		`{{.data.flag}} {{if .data.flag}}yes{{end}}`:         "true yes",
		`{{range .data.tags}}[{{.}}]{{end}}`:                 "[a][b]",
		`{{with .data.customer}}{{.name}}{{end}}`:            "Zoë",
		// Objects and lists print as JSON, not as Go maps.
		`{{.data.tags}} {{.data.dims}}`: `["a","b"] {"h":3.5,"w":2}`,
		`{{.data.note}}`:                "",
	} {
		if got := render(t, src, ev); got != want {
			t.Errorf("Render(%q) = %q; want %q", src, got, want)
		}
	}
}

func TestTemplateMissingRendersEmpty(t *testing.T) {
	ev := samples.Event(t, `{"id":"7d3f1b2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b","event_type":"INSERT","entity_type":"Order","data":{"a":{},"n":null,"items":[null,{"price":1}]}}`)
	// Plain text/template prints "<no value>" for these; ours must not.
	src := `[{{.data.missing}}][{{.data.a.b}}][{{.data.missing.deeper.still}}][{{.changes.status.old}}][{{.user_id}}][{{.timestamp}}][{{index .data "x"}}]`
	std := template.Must(template.New("std").Option("missingkey=zero").Parse(src))
	var b strings.Builder
	_ = std.Execute(&b, handlers.View(ev))
	if !strings.Contains(b.String(), "<no value>") {
		t.Fatalf("text/template renders %q: the test no longer shows the problem it guards against", b.String())
	}
	if got := render(t, src, ev); got != "[][][][][][][]" {
		t.Errorf("Render = %q; want every missing value empty", got)
	}
	for src, want := range map[string]string{
		`{{upper .data.missing}}|{{lower .data.missing}}`: "|",
		// JSON null reads as absent at any depth too.
		`[{{.data.n}}][{{.data.n.x.y}}][{{$.data.n.x}}][{{(index .data "n").x}}]`: "[][][][]",
		`{{with $d := .data}}[{{$d.n.x}}]{{end}}`:                                 "[]",
		`{{range .data.items}}[{{.price}}]{{end}}`:                                "[][1]",
		`{{range $i := .data.items}}[{{$i.price}}]{{end}}`:                        "[][1]",
		`{{with .data}}[{{.n.x}}]{{end}}`:                                         "[]",
		`{{define "s"}}[{{.data.n.x}}]{{end}}{{template "s" .}}`:                  "[]",
		`[{{.changes}}][{{.changes.status}}][{{json .changes}}]`:                  "[][][null]",
		`{{.data.missing | default "n/a"}}`:                                       "n/a",
		`{{urlquery .data.missing}}`:                                              "",
		`{{glob_escape .data.missing}}`:                                           "",
		`{{json .data.missing}}`:                                                  "null",
		`{{if .data.missing}}set{{else}}unset{{end}}`:                             "unset",
		`{{range .data.missing}}x{{end}}`:                                         "",
		`{{$v := .data.missing}}[{{$v}}]`:                                         "[]",
		`{{define "sub"}}({{.data.missing}}){{end}}{{template "sub" .}}`:          "()",
	} {
		if got := render(t, src, ev); got != want {
			t.Errorf("Render(%q) = %q; want %q", src, got, want)
		}
	}
}

func TestTemplateFunctions(t *testing.T) {
	ev := samples.Event(t, samples.OrderUpdate)
	ev.Data["q"] = `a*b?c[d]e\f`
	ev.Data["empty"] = ""
	ev.Data["zero"] = int64(0)
	ev.Data["no"] = false
	ev.Data["html"] = "<a & b>"
	for src, want := range map[string]string{
		`{{json .data.tags}}`:                         `["a","b"]`,
		`{{json .data.dims}}`:                         `{"h":3.5,"w":2}`,
		`{{json .data.status}}`:                       `"shipped"`,
		`{{json .data.total}} {{json .data.price}}`:   `100 100.5`,
		`{{json .data.html}}`:                         `"<a & b>"`,
		`{{.data | json}}`:                            mustJSON(t, ev.Data),
		`{{upper .data.status}}`:                      "SHIPPED",
		`{{lower .entity_type}}`:                      "order",
		`{{upper .data.total}}`:                       "100",
		`{{.data.customer.name | upper}}`:             "ZOË",
		`{{default "x" .data.empty}}`:                 "x",
		`{{default "x" .data.zero}}`:                  "0",
		`{{default "x" .data.no}}`:                    "false",
		`{{default "x" .data.status}}`:                "shipped",
		`{{urlquery .data.html}}`:                     "%3Ca+%26+b%3E",
		`{{urlquery "a b" "c"}}`:                      "a+bc",
		`{{glob_escape .data.q}}`:                     `a\*b\?c\[d\]e\\f`,
		`cache:order:{{glob_escape .entity_id}}:*`:    `cache:order:42:*`,
		`{{printf "%s-%d" .data.status .data.total}}`: "shipped-100",
		// Comparisons take numbers by value, like conditions.
		`{{if eq .data.total 100.0}}y{{end}}{{if eq .data.total 100}}y{{end}}`:   "yy",
		`{{if eq .data.status "paid" "shipped"}}y{{end}}`:                        "y",
		`{{if ne .data.missing "x"}}y{{end}}{{if eq .data.missing nil}}y{{end}}`: "yy",
		`{{if gt .data.price 100}}y{{end}}{{if le .data.total 100.0}}y{{end}}`:   "yy",
		`{{if lt .data.big 9007199254740993.5}}y{{end}}`:                         "y",
		`{{if ge .data.status "s"}}y{{end}}{{if lt .data.total 99.5}}n{{end}}`:   "y",
		`{{if eq .data.dims (index .data "dims")}}y{{end}}`:                      "y",
	} {
		if got := render(t, src, ev); got != want {
			t.Errorf("Render(%q) = %q; want %q", src, got, want)
		}
	}
}

func TestGlobEscape(t *testing.T) {
	for in, want := range map[string]string{
		"":           "",
		"plain:key":  "plain:key",
		"*":          `\*`,
		`a?b[c]d\e*`: `a\?b\[c\]d\\e\*`,
		"ünï*cødé":   `ünï\*cødé`,
	} {
		if got := handlers.GlobEscape(in); got != want {
			t.Errorf("GlobEscape(%q) = %q; want %q", in, got, want)
		}
	}
}

func TestTemplateCompileErrors(t *testing.T) {
	for src, want := range map[string]string{
		`{{ now }}`:            `template does not parse: template: x:1: function "now" not defined`,
		`{{ .data.status `:     "template does not parse: template: x:1: unclosed action",
		`{{ if .data.x }}open`: "template does not parse: template: x:1: unexpected EOF",
		`{{ nosuch .data }}`:   `function "nosuch" not defined`,
	} {
		_, err := handlers.CompileTemplate("x", src)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CompileTemplate(%q) = %v; want an error containing %q", src, err, want)
		}
	}
}

func TestTemplateRuntimeErrors(t *testing.T) {
	ev := samples.Event(t, samples.OrderUpdate)
	for src, want := range map[string]string{
		`{{.data.status.deeper}}`:          `cannot read field "deeper" of a string`,
		`{{if lt .data.missing 1}}{{end}}`: "cannot compare absent value with number",
		`{{if gt .data.status 1}}{{end}}`:  "cannot compare string with number",
	} {
		tm, err := handlers.CompileTemplate("x", src)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := tm.Render(ev); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Render(%q) = %q, %v; want an error containing %q", src, out, err, want)
		}
	}
}

// nasty values that break naive JSON templating.
var nasty = []string{
	`plain`,
	`"quoted"`,
	`back\slash`,
	`trailing\`,
	"new\nline\r\n",
	"tab\there",
	"ctrl\x00\x01\x1f\x7f",
	`</script><script>alert(1)</script>`,
	"unicode é ñ 漢字 😀",
	"line\u2028sep\u2029",
	`{"json": "inside"}`,
	`", "injected": true, "x": "`,
	"invalid utf8 \xff\xfe",
	``,
}

func TestJSONTemplateStaysValid(t *testing.T) {
	tm, err := handlers.CompileJSONTemplate("body", `{
  "status": "{{.data.status}}",
  "message": "Order {{.entity_id}} is now {{.data.status}}!",
  "{{.data.status}}": {{.data.status}},
  "data": {{.data}},
  "tags": {{.data.tags}},
  "total": {{.data.total}},
  "missing": {{.data.missing}},
  "missing_in_string": "[{{.data.missing}}]",
  "explicit": {{.data.status | json}},
  "list": [{{range $i, $t := .data.tags}}{{if $i}}, {{end}}"{{$t}}"{{end}}],
  "escaped_quote_in_text": "say \"{{.data.status}}\" \\",
  "flag": {{if .data.flag}}true{{else}}false{{end}}
}`)
	if err != nil {
		t.Fatalf("CompileJSONTemplate: %v", err)
	}
	for _, s := range nasty {
		t.Run(fmt.Sprintf("%q", s), func(t *testing.T) {
			ev := samples.Event(t, samples.OrderUpdate)
			ev.Data["status"] = s
			ev.Data["tags"] = []any{s, "b"}
			ev.EntityID = s
			out, err := tm.Render(ev)
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			var got map[string]any
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, out)
			}
			// The value survives as encoding/json would carry it (each byte
			// of invalid UTF-8 becomes U+FFFD).
			want := roundTrip(t, s)
			checks := map[string]any{
				"status":                want,
				"message":               "Order " + want + " is now " + want + "!",
				want:                    want,
				"total":                 100.0,
				"missing":               nil,
				"missing_in_string":     "[]",
				"explicit":              want,
				"list":                  []any{want, "b"},
				"tags":                  []any{want, "b"},
				"escaped_quote_in_text": `say "` + want + `" \`,
				"flag":                  true,
			}
			for k, v := range checks {
				if !reflect.DeepEqual(got[k], v) {
					t.Errorf("%s = %#v; want %#v", k, got[k], v)
				}
			}
			if data, ok := got["data"].(map[string]any); !ok || data["status"] != want {
				t.Errorf("data = %#v; want the event's data", got["data"])
			}
			if _, injected := got["injected"]; injected {
				t.Error("a value injected a key")
			}
		})
	}
}

func TestJSONTemplateWholeValues(t *testing.T) {
	ev := samples.Event(t, samples.OrderUpdate)
	tm, err := handlers.CompileJSONTemplate("body", `{{.}}`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := tm.Render(ev)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if got["id"] != ev.ID || got["timestamp"] != "2024-05-06T07:08:09Z" || got["seq"] != 981.0 {
		t.Errorf("view = %v", got)
	}
	if c, _ := got["changes"].(map[string]any); c == nil || c["status"].(map[string]any)["old"] != "paid" {
		t.Errorf("changes = %#v; want the changes", got["changes"])
	}
	// A value inside a string is its JSON text, escaped.
	tm, err = handlers.CompileJSONTemplate("body", `{"embedded": "{{.data.dims}}", "as_json": "{{json .data.dims}}"}`)
	if err != nil {
		t.Fatal(err)
	}
	out, err = tm.Render(ev)
	if err != nil {
		t.Fatal(err)
	}
	var emb map[string]string
	if err := json.Unmarshal([]byte(out), &emb); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if emb["embedded"] != `{"h":3.5,"w":2}` || emb["as_json"] != `{"h":3.5,"w":2}` {
		t.Errorf("embedded = %q", emb)
	}
}

func TestJSONTemplateCompileErrors(t *testing.T) {
	for src, want := range map[string]string{
		`{"a": "{{.data.x}}}`:                     "a string is not closed",
		`{"a": {{.data.x}}0}`:                     `template does not produce JSON: on a sample event it renders "{\"a\": null0}"`,
		`{"a": 1,}`:                               "template does not produce JSON",
		`{"a": {{if .data.x}}"{{else}}1{{end}}}`:  "body:1:11: the branches of {{if}} end in different JSON contexts (inside a string and outside strings)",
		`[{{range .data.tags}}"{{end}}]`:          "the body of {{range}} must end in the JSON context it starts in",
		`[{{range .data.tags}}1{{else}}"{{end}}]`: "the branches of {{range}} end in different JSON contexts",
		`{{define "x"}}1{{end}}{"a": 1}`:          "a JSON template cannot define other templates",
		`{"a": "\{{.data.x}}"}`:                   "an action right after a backslash in a JSON string",
		`{{ now }}`:                               `function "now" not defined`,
		``:                                        "it is empty",
		`{"a": {{with .data.x}}"{{.}}{{end}}"}`:   "the branches of {{with}} end in different JSON contexts",
	} {
		_, err := handlers.CompileJSONTemplate("body", src)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CompileJSONTemplate(%q) = %v; want an error containing %q", src, err, want)
		}
	}
}

func TestTemplateConcurrentRender(t *testing.T) {
	tm, err := handlers.CompileJSONTemplate("body", `{"id": "{{.entity_id}}", "n": {{.data.n}}, "old": {{.changes.n.old}}}`)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 300 {
				n := int64(g*1000 + i)
				ev := &event.Event{
					Type: event.Update, EntityID: fmt.Sprint(n), Data: map[string]any{"n": n},
					Changes: map[string]event.Change{"n": {Old: n - 1, New: n}},
				}
				out, err := tm.Render(ev)
				want := fmt.Sprintf(`{"id": "%d", "n": %d, "old": %d}`, n, n, n-1)
				if err != nil || out != want {
					errs <- fmt.Errorf("Render = %q, %v; want %q", out, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func BenchmarkTemplateRender(b *testing.B) {
	ev := samples.Event(b, samples.OrderUpdate)
	for _, bc := range []struct {
		name string
		json bool
		src  string
	}{
		{"text", false, `Order {{.entity_id}} is now {{.data.status}} ({{.data.customer.address.city}})`},
		{"url", false, `https://api.example.com/orders/{{urlquery .entity_id}}?status={{urlquery .data.status}}`},
		{"json_body", true, `{"id": "{{.id}}", "order": "{{.entity_id}}", "status": "{{.data.status}}", "total": {{.data.total}}}`},
		{"json_body_with_data", true, `{"event": "{{.event_type}}", "data": {{.data}}, "changes": {{.changes}}}`},
	} {
		var tm *handlers.Template
		var err error
		if bc.json {
			tm, err = handlers.CompileJSONTemplate(bc.name, bc.src)
		} else {
			tm, err = handlers.CompileTemplate(bc.name, bc.src)
		}
		if err != nil {
			b.Fatal(err)
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tm.Render(ev); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func roundTrip(t *testing.T, s string) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var out string
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestTemplateDocExamples(t *testing.T) {
	ev, rows := samples.DocExamples(t, "templates.md")
	for _, r := range rows {
		if got := render(t, r[0], ev); got != r[1] {
			t.Errorf("docs: %s renders %q; the page says %q", r[0], got, r[1])
		}
	}
	b, err := os.ReadFile(samples.DocPath(t, "templates.md"))
	if err != nil {
		t.Fatal(err)
	}
	block := func(marker string) string {
		_, rest, ok := strings.Cut(string(b), marker+"\n```")
		if !ok {
			t.Fatalf("templates.md: no %s", marker)
		}
		_, rest, _ = strings.Cut(rest, "\n")
		rest, _, _ = strings.Cut(rest, "```")
		return strings.TrimSpace(rest)
	}
	tm, err := handlers.CompileJSONTemplate("body", block("<!-- json-template -->"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := tm.Render(ev)
	if err != nil {
		t.Fatal(err)
	}
	if want := block("<!-- json-output -->"); got != want {
		t.Errorf("docs: the JSON body renders\n%s\nthe page says\n%s", got, want)
	}
}
