package noop_test

import (
	"strings"
	"testing"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/actiontest"
	"github.com/millrace/millrace/handlers/noop"
)

func registry(t *testing.T) *handlers.Registry {
	t.Helper()
	r := handlers.NewRegistry()
	if err := noop.Register(r); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestNoopConforms(t *testing.T) {
	actiontest.Check(t, actiontest.Case{Registry: registry(t), Config: config.Action{"type": "noop"}})
}

func TestNoopSucceeds(t *testing.T) {
	a := actiontest.Build(t, actiontest.Case{Registry: registry(t), Config: config.Action{"type": "noop"}})
	if err := handlers.Execute(t.Context(), a, actiontest.Event()); err != nil {
		t.Fatalf("Execute = %v, want nil", err)
	}
}

// The section has no keys: a misspelt key of another action is reported,
// not ignored.
func TestNoopRefusesKeys(t *testing.T) {
	_, err := registry(t).Decode("observers.o.actions[0]", config.Action{"type": "noop", "url": "http://x"})
	if err == nil || !strings.Contains(err.Error(), "observers.o.actions[0].url") {
		t.Fatalf("Decode with an unknown key = %v, want an error at observers.o.actions[0].url", err)
	}
}
