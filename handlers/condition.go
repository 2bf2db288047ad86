package handlers

import (
	"fmt"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/vm"

	"github.com/millrace/millrace/event"
)

// Condition is an observer's condition, compiled once.
type Condition struct {
	src  string
	prog *vm.Program
}

// CompileCondition compiles an expression over the event view (see View).
func CompileCondition(src string) (*Condition, error) {
	prog, err := expr.Compile(src, expr.AsBool(), expr.AllowUndefinedVariables())
	if err != nil {
		return nil, fmt.Errorf("does not compile: %w", err)
	}
	return &Condition{src: src, prog: prog}, nil
}

// String returns the source of the condition.
func (c *Condition) String() string { return c.src }

// Eval runs the condition on ev.
func (c *Condition) Eval(ev *event.Event) (bool, error) {
	out, err := expr.Run(c.prog, View(ev))
	if err != nil {
		return false, err
	}
	b, _ := out.(bool)
	return b, nil
}
