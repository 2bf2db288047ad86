package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"text/template"
	"text/template/parse"
	"time"
	"unicode/utf8"

	"github.com/millrace/millrace/event"
)

// Template is a text/template over the event view (see View), compiled
// once and safe for concurrent use: {{ .data.status }}, {{ .entity_type }},
// {{ .id }}. See docs/templates.md.
type Template struct {
	src string
	t   *template.Template
	// changes and timestamp are set when the template may read them;
	// they are then converted for each render.
	changes, timestamp bool
}

// Names of the functions that the compiler appends to each action; the
// leading underscore keeps them apart from the documented ones.
const (
	textFunc       = "_text"
	jsonStringFunc = "_jsonstr"
	getFunc        = "_get"
)

// funcs are the template functions. There is deliberately no clock or
// randomness: a retry must render the same text.
var funcs = template.FuncMap{
	"json":        jsonValue,
	"upper":       func(v any) string { return strings.ToUpper(toString(v)) },
	"lower":       func(v any) string { return strings.ToLower(toString(v)) },
	"default":     defaultValue,
	"urlquery":    urlQuery,
	"glob_escape": func(v any) string { return GlobEscape(toString(v)) },

	// text/template's comparisons refuse int64 against float64 (100
	// against 100.0): these compare numbers by value, as conditions do.
	"eq": func(a any, bs ...any) bool {
		for _, b := range bs {
			if Equal(a, b) {
				return true
			}
		}
		return false
	},
	"ne": func(a, b any) bool { return !Equal(a, b) },
	"lt": func(a, b any) (bool, error) { c, err := compare(a, b); return c < 0, err },
	"le": func(a, b any) (bool, error) { c, err := compare(a, b); return c <= 0, err },
	"gt": func(a, b any) (bool, error) { c, err := compare(a, b); return c > 0, err },
	"ge": func(a, b any) (bool, error) { c, err := compare(a, b); return c >= 0, err },

	textFunc:       textValue,
	jsonStringFunc: jsonStringContent,
	getFunc:        getPath,
}

// CompileTemplate parses src. A missing key, at any depth, renders as
// nothing rather than text/template's "<no value>".
func CompileTemplate(name, src string) (*Template, error) {
	t, err := parseTemplate(name, src)
	if err != nil {
		return nil, err
	}
	changes, timestamp := readsKey(t, "changes"), readsKey(t, "timestamp")
	for _, tt := range t.Templates() {
		if tt.Tree == nil {
			continue
		}
		WalkTemplate(tt.Tree.Root, func(n parse.Node) {
			if a, ok := n.(*parse.ActionNode); ok && len(a.Pipe.Decl) == 0 {
				appendFunc(tt.Tree, a.Pipe, textFunc)
			}
		})
		rewriteFields(tt.Tree, tt.Tree.Root, tt.Name() == name)
	}
	return &Template{src: src, t: t, changes: changes, timestamp: timestamp}, nil
}

// CompileJSONTemplate parses src, a template that produces a JSON
// document, such as a webhook body: {"status": "{{ .data.status }}",
// "order": {{ .data }}}. It escapes by context, so the output is valid
// JSON whatever the event holds: an action inside a JSON string renders
// its value as string content (quotes, backslashes and control
// characters escaped), an action anywhere else renders its value as
// JSON (see the json function). It fails when the template cannot be
// escaped this way (branches that end inside and outside a string, a
// call of another template) or does not render valid JSON on a sample
// event.
func CompileJSONTemplate(name, src string) (*Template, error) {
	if strings.TrimSpace(src) == "" {
		return nil, errors.New("template does not parse: it is empty")
	}
	t, err := parseTemplate(name, src)
	if err != nil {
		return nil, err
	}
	if len(t.Templates()) > 1 {
		return nil, errors.New("template does not parse: a JSON template cannot define other templates")
	}
	tree := t.Tree
	changes, timestamp, samples := readsKey(t, "changes"), readsKey(t, "timestamp"), sampleEvents(tree)
	end, err := escapeJSON(tree, tree.Root, jsonState{})
	if err != nil {
		return nil, fmt.Errorf("template cannot be escaped as JSON: %w", err)
	}
	if end.inString {
		return nil, errors.New("template does not produce JSON: a string is not closed")
	}
	rewriteFields(tree, tree.Root, true)
	out := &Template{src: src, t: t, changes: changes, timestamp: timestamp}
	for _, ev := range samples {
		s, err := out.Render(ev)
		if err != nil {
			// The sample lacks what the template needs (an index into a
			// list, say); the escaping above still holds.
			continue
		}
		if !json.Valid([]byte(s)) {
			return nil, fmt.Errorf("template does not produce JSON: on a sample event it renders %s", clipText(s))
		}
	}
	return out, nil
}

func parseTemplate(name, src string) (*template.Template, error) {
	t, err := template.New(name).Funcs(funcs).Parse(src)
	if err != nil {
		return nil, fmt.Errorf("template does not parse: %w", err)
	}
	return t, nil
}

var viewPool = sync.Pool{New: func() any { return make(map[string]any, viewSize) }}

// Render executes the template on ev.
func (t *Template) Render(ev *event.Event) (string, error) {
	var b strings.Builder
	if err := t.Execute(&b, ev); err != nil {
		return "", err
	}
	return b.String(), nil
}

// Execute writes the template's output for ev to w.
func (t *Template) Execute(w io.Writer, ev *event.Event) error {
	m := viewPool.Get().(map[string]any)
	fillView(m, ev, t.changes, t.timestamp)
	err := t.t.Execute(w, m)
	clear(m)
	viewPool.Put(m)
	return err
}

// String returns the template's source.
func (t *Template) String() string { return t.src }

// GlobEscape escapes the characters that are special in a Redis glob
// pattern (* ? [ ] \), so that a value from an event matches only
// itself inside a SCAN MATCH pattern.
func GlobEscape(s string) string {
	if !strings.ContainsAny(s, `*?[]\`) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 4)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// compare orders two numbers by value or two strings.
func compare(a, b any) (int, error) {
	if x, ok := toNumber(a); ok {
		if y, ok := toNumber(b); ok {
			return x.compare(y), nil
		}
	}
	if x, ok := a.(string); ok {
		if y, ok := b.(string); ok {
			return strings.Compare(x, y), nil
		}
	}
	return 0, fmt.Errorf("cannot compare %s with %s", Kind(a), Kind(b))
}

// jsonValue marshals v as compact JSON without HTML escaping; an absent
// value is null.
func jsonValue(v any) (string, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", fmt.Errorf("json: %w", err)
	}
	return strings.TrimSuffix(b.String(), "\n"), nil
}

// textValue is appended to every action of a text template: an absent
// value prints as nothing, an object or a list as JSON.
func textValue(v any) any {
	switch v.(type) {
	case nil:
		return ""
	case map[string]any, []any:
		return toString(v)
	}
	return v
}

// defaultValue returns d when v is absent or the empty string. Zero and
// false are values, unlike in some template libraries.
func defaultValue(d, v any) any {
	if v == nil {
		return d
	}
	if s, ok := v.(string); ok && s == "" {
		return d
	}
	return v
}

// urlQuery is text/template's urlquery with absent values as nothing.
func urlQuery(args ...any) string {
	if len(args) == 1 {
		return url.QueryEscape(toString(args[0]))
	}
	for i, a := range args {
		if a == nil {
			args[i] = ""
		}
	}
	return url.QueryEscape(fmt.Sprint(args...))
}

// toString is how a value reads as text: absent is empty, objects and
// lists are JSON.
func toString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case map[string]any:
		if x == nil { // .changes of an event without changes
			return ""
		}
		s, err := jsonValue(x)
		if err != nil {
			return fmt.Sprint(x)
		}
		return s
	case string:
		return x
	case int64:
		return strconv.FormatInt(x, 10)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	case []any:
		s, err := jsonValue(x)
		if err != nil {
			return fmt.Sprint(x)
		}
		return s
	}
	return fmt.Sprint(v)
}

// jsonStringContent renders v as the inside of a JSON string literal,
// without the quotes.
func jsonStringContent(v any) string {
	return escapeJSONString(toString(v))
}

func escapeJSONString(s string) string {
	const hex = "0123456789abcdef"
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b.WriteByte('\\')
				b.WriteByte(c)
			case c == '\n':
				b.WriteString(`\n`)
			case c == '\r':
				b.WriteString(`\r`)
			case c == '\t':
				b.WriteString(`\t`)
			case c < 0x20 || c == 0x7f:
				b.WriteString(`\u00`)
				b.WriteByte(hex[c>>4])
				b.WriteByte(hex[c&0xf])
			default:
				b.WriteByte(c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b.WriteString(`\ufffd`) // invalid UTF-8 is not JSON
		case r == '\u2028' || r == '\u2029':
			// Valid JSON, but not valid JavaScript in older engines.
			b.WriteString(`\u202`)
			b.WriteByte(hex[r&0xf])
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// jsonState is where the output stands in the JSON text.
type jsonState struct {
	inString bool // inside a string literal
	escaped  bool // right after a backslash inside a string literal
}

func (s jsonState) text(t []byte) jsonState {
	for _, c := range t {
		switch {
		case !s.inString:
			s.inString = c == '"'
		case s.escaped:
			s.escaped = false
		case c == '\\':
			s.escaped = true
		case c == '"':
			s.inString = false
		}
	}
	return s
}

// escapeJSON walks list in output order, appends to each action the
// escaper for its JSON context, and returns the state at the end.
func escapeJSON(tree *parse.Tree, list *parse.ListNode, s jsonState) (jsonState, error) {
	if list == nil {
		return s, nil
	}
	for _, n := range list.Nodes {
		switch n := n.(type) {
		case *parse.TextNode:
			s = s.text(n.Text)
		case *parse.ActionNode:
			if len(n.Pipe.Decl) > 0 {
				continue // an assignment prints nothing
			}
			switch {
			case s.escaped:
				return s, fmt.Errorf("%s: an action right after a backslash in a JSON string", where(tree, n))
			case s.inString:
				appendFunc(tree, n.Pipe, jsonStringFunc)
			case !endsWith(n.Pipe, "json"):
				appendFunc(tree, n.Pipe, "json")
			}
		case *parse.IfNode:
			var err error
			if s, err = branches(tree, &n.BranchNode, s, "if"); err != nil {
				return s, err
			}
		case *parse.WithNode:
			var err error
			if s, err = branches(tree, &n.BranchNode, s, "with"); err != nil {
				return s, err
			}
		case *parse.RangeNode:
			// The body may run any number of times, so it must end
			// where it started.
			end, err := escapeJSON(tree, n.List, s)
			if err != nil {
				return s, err
			}
			if end != s {
				return s, fmt.Errorf("%s: the body of {{range}} must end in the JSON context it starts in (%s)", where(tree, n), s.describe())
			}
			if n.ElseList != nil {
				if end, err = escapeJSON(tree, n.ElseList, s); err != nil {
					return s, err
				}
				if end != s {
					return s, fmt.Errorf("%s: the branches of {{range}} end in different JSON contexts (%s and %s)", where(tree, n), s.describe(), end.describe())
				}
			}
		case *parse.TemplateNode:
			return s, fmt.Errorf("%s: a JSON template cannot call another template", where(tree, n))
		}
	}
	return s, nil
}

// branches escapes both branches of an if, with or range; they must
// end in the same context.
func branches(tree *parse.Tree, n *parse.BranchNode, s jsonState, kind string) (jsonState, error) {
	a, err := escapeJSON(tree, n.List, s)
	if err != nil {
		return s, err
	}
	b := s
	if n.ElseList != nil {
		if b, err = escapeJSON(tree, n.ElseList, s); err != nil {
			return s, err
		}
	}
	if a != b {
		return s, fmt.Errorf("%s: the branches of {{%s}} end in different JSON contexts (%s and %s)", where(tree, n), kind, a.describe(), b.describe())
	}
	return a, nil
}

func (s jsonState) describe() string {
	if s.inString {
		return "inside a string"
	}
	return "outside strings"
}

func where(tree *parse.Tree, n parse.Node) string {
	loc, _ := tree.ErrorContext(n)
	return loc
}

func endsWith(p *parse.PipeNode, fn string) bool {
	if len(p.Cmds) == 0 {
		return false
	}
	last := p.Cmds[len(p.Cmds)-1]
	if len(last.Args) != 1 {
		return false
	}
	id, ok := last.Args[0].(*parse.IdentifierNode)
	return ok && id.Ident == fn
}

// appendFunc adds "| fn" at the end of a pipeline.
func appendFunc(tree *parse.Tree, p *parse.PipeNode, fn string) {
	id := parse.NewIdentifier(fn).SetTree(tree).SetPos(p.Position())
	p.Cmds = append(p.Cmds, &parse.CommandNode{NodeType: parse.NodeCommand, Pos: p.Position(), Args: []parse.Node{id}})
}

// rewriteFields turns field chains that may pass through a null into
// calls of getPath, for which null and absent read the same at any
// depth: text/template stops with "nil pointer evaluating interface
// {}.b" on .data.a.b when data.a is JSON null. Chains from the view of
// one or two steps (.data.status, .changes.status) cannot meet a null
// and keep text/template's faster field access. dotIsView tells whether
// dot is the view, as it is outside range and with.
func rewriteFields(tree *parse.Tree, list *parse.ListNode, dotIsView bool) {
	if list == nil {
		return
	}
	for _, n := range list.Nodes {
		switch n := n.(type) {
		case *parse.ActionNode:
			rewritePipe(tree, n.Pipe, dotIsView)
		case *parse.TemplateNode:
			rewritePipe(tree, n.Pipe, dotIsView)
		case *parse.IfNode:
			rewritePipe(tree, n.Pipe, dotIsView)
			rewriteFields(tree, n.List, dotIsView)
			rewriteFields(tree, n.ElseList, dotIsView)
		case *parse.RangeNode:
			rewritePipe(tree, n.Pipe, dotIsView)
			rewriteFields(tree, n.List, false)
			rewriteFields(tree, n.ElseList, dotIsView)
		case *parse.WithNode:
			rewritePipe(tree, n.Pipe, dotIsView)
			rewriteFields(tree, n.List, false)
			rewriteFields(tree, n.ElseList, dotIsView)
		}
	}
}

func rewritePipe(tree *parse.Tree, p *parse.PipeNode, dotIsView bool) {
	if p == nil {
		return
	}
	for _, cmd := range p.Cmds {
		for i, arg := range cmd.Args {
			var base parse.Node
			var path []string
			switch a := arg.(type) {
			case *parse.PipeNode:
				rewritePipe(tree, a, dotIsView)
				continue
			case *parse.FieldNode:
				if dotIsView && len(a.Ident) <= 2 {
					continue
				}
				base, path = &parse.DotNode{NodeType: parse.NodeDot, Pos: a.Pos}, a.Ident
			case *parse.VariableNode:
				if len(a.Ident) < 2 || a.Ident[0] == "$" && len(a.Ident) <= 3 {
					continue
				}
				base = &parse.VariableNode{NodeType: parse.NodeVariable, Pos: a.Pos, Ident: a.Ident[:1]}
				path = a.Ident[1:]
			case *parse.ChainNode:
				if sub, ok := a.Node.(*parse.PipeNode); ok {
					rewritePipe(tree, sub, dotIsView)
				}
				base, path = a.Node, a.Field
			default:
				continue
			}
			args := []parse.Node{parse.NewIdentifier(getFunc).SetTree(tree).SetPos(arg.Position()), base}
			for _, k := range path {
				args = append(args, &parse.StringNode{NodeType: parse.NodeString, Pos: arg.Position(), Quoted: strconv.Quote(k), Text: k})
			}
			cmd.Args[i] = &parse.PipeNode{NodeType: parse.NodePipe, Pos: arg.Position(),
				Cmds: []*parse.CommandNode{{NodeType: parse.NodeCommand, Pos: arg.Position(), Args: args}}}
		}
	}
}

// getPath follows keys through nested objects; absent or null at any
// depth is nil. Reading a key of a string, number or list is an error.
func getPath(v any, keys ...string) (any, error) {
	for _, k := range keys {
		switch m := v.(type) {
		case nil:
			return nil, nil
		case map[string]any:
			v = m[k]
		case map[string]string:
			v = m[k]
		default:
			return nil, fmt.Errorf("cannot read field %q of a %s", k, Kind(v))
		}
	}
	return v, nil
}

// Kind names the kind of an event value as error messages say it:
// object, list, string, number, boolean or absent value.
func Kind(v any) string {
	switch v.(type) {
	case nil:
		return "absent value"
	case map[string]any:
		return "object"
	case string:
		return "string"
	case int64, float64, int:
		return "number"
	case bool:
		return "boolean"
	case []any:
		return "list"
	}
	return fmt.Sprintf("%T", v)
}

// WalkTemplate calls fn on every node under n, parents first: actions
// that inspect their templates at build time use it.
func WalkTemplate(n parse.Node, fn func(parse.Node)) {
	if n == nil {
		return
	}
	fn(n)
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return
		}
		for _, c := range n.Nodes {
			WalkTemplate(c, fn)
		}
	case *parse.ActionNode:
		WalkTemplate(n.Pipe, fn)
	case *parse.PipeNode:
		if n == nil {
			return
		}
		for _, d := range n.Decl {
			WalkTemplate(d, fn)
		}
		for _, c := range n.Cmds {
			WalkTemplate(c, fn)
		}
	case *parse.CommandNode:
		for _, a := range n.Args {
			WalkTemplate(a, fn)
		}
	case *parse.ChainNode:
		WalkTemplate(n.Node, fn)
	case *parse.IfNode:
		walkBranch(&n.BranchNode, fn)
	case *parse.RangeNode:
		walkBranch(&n.BranchNode, fn)
	case *parse.WithNode:
		walkBranch(&n.BranchNode, fn)
	case *parse.TemplateNode:
		WalkTemplate(n.Pipe, fn)
	}
}

func walkBranch(b *parse.BranchNode, fn func(parse.Node)) {
	WalkTemplate(b.Pipe, fn)
	WalkTemplate(b.List, fn)
	if b.ElseList != nil {
		WalkTemplate(b.ElseList, fn)
	}
}

// readsKey reports whether a template may read the view's key: by
// name, or through the whole view (a bare dot, $, a call of another
// template).
func readsKey(t *template.Template, key string) bool {
	found := false
	for _, tt := range t.Templates() {
		if tt.Tree == nil {
			continue
		}
		WalkTemplate(tt.Tree.Root, func(n parse.Node) {
			switch n := n.(type) {
			case *parse.FieldNode:
				found = found || n.Ident[0] == key
			case *parse.VariableNode:
				found = found || len(n.Ident) == 1 || n.Ident[1] == key
			case *parse.DotNode, *parse.TemplateNode:
				found = true
			case *parse.StringNode:
				found = found || n.Text == key
			case *parse.ChainNode:
				found = found || len(n.Field) > 0 && n.Field[0] == key
			}
		})
	}
	return found
}

// sampleEvents are what CompileJSONTemplate renders to check its output:
// one with nothing in data, one where every data path the template
// names holds a string that needs escaping.
func sampleEvents(tree *parse.Tree) []*event.Event {
	const nasty = "q\"uote\\back\nline\ttab\u0001\u2028é😀</script>"
	data := map[string]any{}
	WalkTemplate(tree.Root, func(n parse.Node) {
		f, ok := n.(*parse.FieldNode)
		if !ok || len(f.Ident) < 2 || f.Ident[0] != "data" {
			return
		}
		m := data
		for i, k := range f.Ident[1:] {
			if i == len(f.Ident)-2 {
				if _, isMap := m[k].(map[string]any); !isMap {
					m[k] = nasty
				}
				break
			}
			next, ok := m[k].(map[string]any)
			if !ok {
				next = map[string]any{}
				m[k] = next
			}
			m = next
		}
	})
	base := event.Event{
		ID: "00000000-0000-4000-8000-000000000000", Type: event.Update, Entity: "Sample",
		EntityID: "1", Timestamp: time.Unix(0, 0).UTC(), Data: map[string]any{},
		Changes: map[string]event.Change{"status": {Old: nasty, New: nasty + "!"}},
		UserID:  nasty, TenantID: nasty, Source: nasty,
	}
	withData := base
	withData.Data = data
	return []*event.Event{&base, &withData}
}

func clipText(s string) string {
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return strconv.Quote(s)
}
