package handlers_test

import (
	"context"
	"errors"
	"testing"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

func TestExecute(t *testing.T) {
	t.Parallel()
	transient := errors.New("connection refused")
	for _, tc := range []struct {
		name      string
		action    handlers.ActionFunc
		want      string // the error's text; "" for nil
		permanent bool
	}{
		{"success", func(context.Context, *event.Event) error { return nil }, "", false},
		{"transient", func(context.Context, *event.Event) error { return transient }, "connection refused", false},
		{"permanent", func(context.Context, *event.Event) error { return handlers.Permanent(transient) }, "connection refused", true},
		{"panic with a string", func(context.Context, *event.Event) error { panic("nil map write") }, "panic: nil map write", true},
		{"panic with an error", func(context.Context, *event.Event) error { panic(transient) }, "panic: connection refused", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := handlers.Execute(t.Context(), tc.action, &event.Event{ID: "e1"})
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.want || handlers.IsPermanent(err) != tc.permanent {
				t.Errorf("Execute = %v (permanent %v); want %q (permanent %v)", err, handlers.IsPermanent(err), tc.want, tc.permanent)
			}
		})
	}
}
