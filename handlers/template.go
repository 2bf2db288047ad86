package handlers

import (
	"fmt"
	"strings"
	"text/template"

	"github.com/millrace/millrace/event"
)

// Template is a text/template over the event view (see View), compiled
// once: {{ .data.status }}, {{ .entity_type }}, {{ .id }}.
type Template struct {
	src string
	t   *template.Template
}

// CompileTemplate parses src. Referring to a missing map key renders
// nothing rather than "<no value>".
func CompileTemplate(name, src string) (*Template, error) {
	t, err := template.New(name).Option("missingkey=zero").Parse(src)
	if err != nil {
		return nil, fmt.Errorf("template does not parse: %w", err)
	}
	return &Template{src: src, t: t}, nil
}

// Render executes the template on ev.
func (t *Template) Render(ev *event.Event) (string, error) {
	var b strings.Builder
	if err := t.t.Execute(&b, View(ev)); err != nil {
		return "", err
	}
	return b.String(), nil
}

// String returns the template's source.
func (t *Template) String() string { return t.src }
