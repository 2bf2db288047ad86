package engine

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"
	"github.com/expr-lang/expr/vm/runtime"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

// MaxConditionLen bounds the source of a condition, as the original
// system did.
const MaxConditionLen = 4096

// ErrNoChanges is wrapped by the error of field_changed, field_changed_to
// and field_changed_from on an UPDATE whose producer did not track
// changes: the condition cannot be answered, and retrying cannot help.
var ErrNoChanges = errors.New("the event carries no changes (the producer did not track them)")

// Condition is an observer's condition, compiled once and safe for
// concurrent use. See docs/conditions.md for the language.
type Condition struct {
	src  string
	prog *vm.Program
}

// The functions of the original system. Each receives the environment
// as a hidden first argument, put there by the envArg patcher, so that
// they see the whole event without a closure per evaluation.
var condFuncs = map[string]struct {
	fn  func(e *condEnv, args []any) (any, error)
	typ any
}{
	"has_field":          {hasField, new(func(any, string) bool)},
	"field_changed":      {fieldChanged, new(func(any, string) bool)},
	"field_changed_to":   {fieldChangedTo, new(func(any, string, any) bool)},
	"field_changed_from": {fieldChangedFrom, new(func(any, string, any) bool)},
}

// Names under which the patchers below inject value equality and field
// access; no user function can be called so.
const (
	eqFunc    = "__millrace_equal"
	fetchFunc = "__millrace_fetch"
)

// CompileCondition compiles an expression over the event (see
// docs/conditions.md). A compile error carries its line and column:
// "does not compile at 1:12: ...".
func CompileCondition(src string) (*Condition, error) {
	if len(src) > MaxConditionLen {
		return nil, fmt.Errorf("is %d bytes long; the limit is %d", len(src), MaxConditionLen)
	}
	if strings.TrimSpace(src) == "" {
		return nil, errors.New("is empty")
	}
	callees := calleeScan{}
	opts := []expr.Option{
		expr.Env(&condEnv{}),
		expr.AsBool(),
		expr.Function(eqFunc, func(p ...any) (any, error) { return handlers.Equal(p[0], p[1]), nil },
			new(func(any, any) bool)),
		expr.Function(fetchFunc, func(p ...any) (any, error) { return fetch(p[0], p[1]) },
			new(func(any, any) any)),
		expr.Patch(callees),
		expr.Patch(fetchPatch{callees: callees}),
		expr.Patch(envArg{}),
		expr.Patch(valueEquality{}),
		expr.Patch(nilIsFalse{}),
	}
	for name, f := range condFuncs {
		fn := f.fn
		opts = append(opts, expr.Function(name, func(p ...any) (any, error) {
			e, ok := p[0].(*condEnv)
			if !ok {
				return nil, fmt.Errorf("%s: called without the event", name)
			}
			return fn(e, p[1:])
		}, f.typ))
	}
	prog, err := expr.Compile(src, opts...)
	if err != nil {
		var pe *posError
		if err = positioned(err); errors.As(err, &pe) {
			return nil, fmt.Errorf("does not compile %w", err)
		}
		return nil, fmt.Errorf("does not compile: %w", err)
	}
	return &Condition{src: src, prog: prog}, nil
}

// String returns the source of the condition.
func (c *Condition) String() string { return c.src }

var (
	vmPool  = sync.Pool{New: func() any { return new(vm.VM) }}
	envPool = sync.Pool{New: func() any { return new(condEnv) }}
)

// Eval runs the condition on ev. An error means the condition cannot be
// answered for this event (a type mismatch, an ordered comparison with
// an absent field, field_changed without changes); it names the
// position: "at 1:6: invalid operation: <nil> > int".
func (c *Condition) Eval(ev *event.Event) (bool, error) {
	env := envPool.Get().(*condEnv)
	env.fill(ev)
	m := vmPool.Get().(*vm.VM)
	out, err := m.Run(c.prog, env)
	vmPool.Put(m)
	*env = condEnv{}
	envPool.Put(env)
	if err != nil {
		return false, positioned(err)
	}
	b, ok := out.(bool)
	if !ok { // expr.AsBool already casts; this is a safety net
		return false, fmt.Errorf("evaluates to %T, not a boolean", out)
	}
	return b, nil
}

// positioned turns expr's multi-line error (message, position, source
// excerpt) into one line that starts with the position, keeping the
// original in the chain.
func positioned(err error) error {
	var fe *file.Error
	if !errors.As(err, &fe) || fe.Snippet == "" {
		if first, _, multi := strings.Cut(err.Error(), "\n"); multi {
			// An internal failure of expr comes with a stack trace.
			return errors.New(first)
		}
		return err
	}
	return &posError{line: fe.Line, col: fe.Column + 1, msg: strings.TrimSpace(fe.Message), err: err}
}

type posError struct {
	line, col int
	msg       string
	err       error
}

func (e *posError) Error() string { return fmt.Sprintf("at %d:%d: %s", e.line, e.col, e.msg) }
func (e *posError) Unwrap() error { return e.err }

// calleeScan records the callee of each method call, such as
// timestamp.Year(), whose member access must stay as it is.
type calleeScan map[*ast.MemberNode]bool

func (s calleeScan) Visit(node *ast.Node) {
	if n, ok := (*node).(*ast.CallNode); ok {
		if m, ok := n.Callee.(*ast.MemberNode); ok {
			s[m] = true
		}
	}
}

// fetchPatch routes member access on event values (data.status,
// data.tags[0], changes.status.old) to fetch. expr's own access goes
// through reflection, allocates, and fails on a nil in the middle of a
// path; fetch reads the event's maps directly and makes an absent field
// nil at any depth, so that data.customer.address.city == 'Paris' is
// false, not an error, when the event has no customer. Access to typed
// values (the timestamp, $env) stays with expr.
type fetchPatch struct{ callees calleeScan }

func (p fetchPatch) Visit(node *ast.Node) {
	m, ok := (*node).(*ast.MemberNode)
	if !ok || p.callees[m] {
		return
	}
	if id, ok := m.Node.(*ast.IdentifierNode); ok && id.Value == "$env" {
		return
	}
	switch t := m.Node.Type(); {
	case t == nil:
	case t.Kind() == reflect.Struct, t.Kind() == reflect.Pointer && t.Elem().Kind() == reflect.Struct:
		return
	}
	ast.Patch(node, &ast.CallNode{
		Callee:    &ast.IdentifierNode{Value: fetchFunc},
		Arguments: []ast.Node{m.Node, m.Property},
	})
}

// fetch reads key from an event value. Absent, at any depth, is nil: a
// missing key, a key of nil, an index past the end of a list. Reading a
// field of a string, number or boolean is an error.
func fetch(from, key any) (any, error) {
	switch x := from.(type) {
	case nil:
		return nil, nil
	case map[string]any:
		k, ok := key.(string)
		if !ok {
			return nil, fmt.Errorf("an object key must be a string, got %T", key)
		}
		return x[k], nil
	case []any:
		n, ok := handlers.Integer(key)
		if !ok {
			return nil, fmt.Errorf("a list index must be an integer, got %v", key)
		}
		if n < 0 { // from the end, as in expr
			n += int64(len(x))
		}
		if n < 0 || n >= int64(len(x)) {
			return nil, nil
		}
		return x[n], nil
	case map[string]event.Change:
		k, ok := key.(string)
		if !ok {
			return nil, fmt.Errorf("a changes key must be a string, got %T", key)
		}
		c, ok := x[k]
		if !ok {
			return nil, nil
		}
		return c, nil
	case event.Change:
		switch key {
		case "old":
			return x.Old, nil
		case "new":
			return x.New, nil
		}
		return nil, fmt.Errorf("a change has old and new, not %v", key)
	case string, bool, int64, float64, int:
		return nil, fmt.Errorf("cannot read %v of a %s", key, handlers.Kind(from))
	}
	return runtime.Fetch(from, key), nil
}

// envArg passes the environment to the condition functions as a hidden
// first argument.
type envArg struct{}

func (envArg) Visit(node *ast.Node) {
	call, ok := (*node).(*ast.CallNode)
	if !ok {
		return
	}
	id, ok := call.Callee.(*ast.IdentifierNode)
	if !ok {
		return
	}
	if _, ok := condFuncs[id.Value]; !ok {
		return
	}
	// A new node: the old one may carry a type from the check before
	// patching, which would hide an arity error.
	ast.Patch(node, &ast.CallNode{
		Callee:    call.Callee,
		Arguments: append([]ast.Node{&ast.IdentifierNode{Value: "$env"}}, call.Arguments...),
	})
}

// nilIsFalse makes an absent field false where a boolean is expected:
// the operands of !, && and || and the condition of ?:. (The whole
// condition already reads nil as false.) Other values that are not
// booleans stay errors.
type nilIsFalse struct{}

func (nilIsFalse) Visit(node *ast.Node) {
	switch n := (*node).(type) {
	case *ast.UnaryNode:
		if n.Operator == "!" || n.Operator == "not" {
			orFalse(&n.Node)
		}
	case *ast.BinaryNode:
		switch n.Operator {
		case "&&", "||", "and", "or":
			orFalse(&n.Left)
			orFalse(&n.Right)
		}
	case *ast.ConditionalNode:
		orFalse(&n.Cond)
	}
}

// orFalse rewrites n to (n ?? false) unless n is known to be a boolean.
func orFalse(n *ast.Node) {
	if t := (*n).Type(); t != nil && t.Kind() == reflect.Bool {
		return
	}
	ast.Patch(n, &ast.BinaryNode{Operator: "??", Left: *n, Right: &ast.BoolNode{Value: false}})
}

// valueEquality routes == and != to Equal when both operands may hold a
// map or a list, because expr compares maps with reflect.DeepEqual, for
// which int64(1) in an event and the literal 1 differ. Comparisons with
// a scalar literal or a typed envelope field keep expr's own operator,
// which already compares numbers by value.
type valueEquality struct{}

func (valueEquality) Visit(node *ast.Node) {
	b, ok := (*node).(*ast.BinaryNode)
	if !ok || (b.Operator != "==" && b.Operator != "!=") {
		return
	}
	if scalar(b.Left) || scalar(b.Right) {
		return
	}
	var out ast.Node = &ast.CallNode{
		Callee:    &ast.IdentifierNode{Value: eqFunc},
		Arguments: []ast.Node{b.Left, b.Right},
	}
	if b.Operator == "!=" {
		out = &ast.UnaryNode{Operator: "!", Node: out}
	}
	ast.Patch(node, out)
}

// scalar reports whether n is a scalar literal or has a known scalar
// type, so that expr's == is already right for it.
func scalar(n ast.Node) bool {
	switch n.(type) {
	case *ast.StringNode, *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.NilNode:
		return true
	}
	t := n.Type()
	if t == nil {
		return false
	}
	switch t.Kind() {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

func fieldArg(fn string, args []any) (string, error) {
	f, ok := args[0].(string)
	if !ok {
		return "", fmt.Errorf("%s: the field name must be a string, got %T", fn, args[0])
	}
	return f, nil
}

func hasField(e *condEnv, args []any) (any, error) {
	f, err := fieldArg("has_field", args)
	if err != nil {
		return nil, err
	}
	_, ok := lookupPath(e.Data, f)
	return ok, nil
}

// change returns the old and new value of field f and whether it
// changed. On INSERT, DELETE and CUSTOM nothing changed; on an UPDATE
// without changes the question cannot be answered.
func (e *condEnv) change(fn, f string) (old, cur any, changed bool, err error) {
	if e.ev.Type != event.Update {
		return nil, nil, false, nil
	}
	if e.ev.Changes == nil {
		if fn == "field_changed" {
			return nil, nil, false, fmt.Errorf("%s('%s'): %w", fn, f, ErrNoChanges)
		}
		return nil, nil, false, fmt.Errorf("%s('%s', …): %w", fn, f, ErrNoChanges)
	}
	if c, ok := e.ev.Changes[f]; ok {
		return c.Old, c.New, !handlers.Equal(c.Old, c.New), nil
	}
	// A dotted path reaches into a changed object or map field:
	// field_changed('customer.email') compares customer's old and new
	// email.
	head, rest, dotted := strings.Cut(f, ".")
	if !dotted {
		return nil, nil, false, nil
	}
	c, ok := e.ev.Changes[head]
	if !ok {
		return nil, nil, false, nil
	}
	old, _ = lookupPath(c.Old, rest)
	cur, _ = lookupPath(c.New, rest)
	return old, cur, !handlers.Equal(old, cur), nil
}

func fieldChanged(e *condEnv, args []any) (any, error) {
	f, err := fieldArg("field_changed", args)
	if err != nil {
		return nil, err
	}
	_, _, changed, err := e.change("field_changed", f)
	return changed, err
}

func fieldChangedTo(e *condEnv, args []any) (any, error) {
	f, err := fieldArg("field_changed_to", args)
	if err != nil {
		return nil, err
	}
	_, cur, changed, err := e.change("field_changed_to", f)
	return changed && handlers.Equal(cur, args[1]), err
}

func fieldChangedFrom(e *condEnv, args []any) (any, error) {
	f, err := fieldArg("field_changed_from", args)
	if err != nil {
		return nil, err
	}
	old, _, changed, err := e.change("field_changed_from", f)
	return changed && handlers.Equal(old, args[1]), err
}

// lookupPath follows a dotted path through nested objects. A key that
// itself contains dots is found first as it is.
func lookupPath(v any, path string) (any, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, false
	}
	if x, ok := m[path]; ok {
		return x, true
	}
	head, rest, dotted := strings.Cut(path, ".")
	if !dotted {
		return nil, false
	}
	x, ok := m[head]
	if !ok {
		return nil, false
	}
	return lookupPath(x, rest)
}
