package handlers_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

// probeConfig is a small action type used across these tests: it has a
// required field, a defaulted one and a nested table.
type probeConfig struct {
	URL     string            `koanf:"url"`
	Method  string            `koanf:"method"`
	Headers map[string]string `koanf:"headers"`
	Retry   struct {
		Limit int `koanf:"limit"`
	} `koanf:"retry"`
}

func (c *probeConfig) SetDefaults() { c.Method = "POST" }

func (c probeConfig) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, config.Errorf("url", "is required"))
	}
	if c.Method != "POST" && c.Method != "PUT" {
		errs = append(errs, config.Errorf("method", "must be POST or PUT, got %q", c.Method))
	}
	if c.Retry.Limit < 0 {
		errs = append(errs, errors.New("retry.limit must not be negative"))
	}
	return errors.Join(errs...)
}

type probe struct{ cfg probeConfig }

var _ handlers.Action = (*probe)(nil)

func (p *probe) Execute(context.Context, *event.Event) error { return nil }

func newProbe(_ context.Context, c probeConfig, _ handlers.Deps) (handlers.Action, error) {
	if c.URL == "http://fail.build" {
		return nil, errors.New("cannot reach it")
	}
	return &probe{cfg: c}, nil
}

func probeRegistry(t *testing.T) *handlers.Registry {
	t.Helper()
	r := handlers.NewRegistry()
	if err := handlers.Register(r, "probe", newProbe); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRegisterNames(t *testing.T) {
	for _, name := range []string{"webhook", "cache_invalidate", "a1", "v2_hook_3"} {
		if err := handlers.Register(handlers.NewRegistry(), name, newProbe); err != nil {
			t.Errorf("Register(%q): %v", name, err)
		}
	}
	for _, name := range []string{"", "Webhook", "cache-invalidate", "_x", "x_", "a__b", "a b", "é"} {
		err := handlers.Register(handlers.NewRegistry(), name, newProbe)
		if err == nil || !strings.Contains(err.Error(), "name must match") {
			t.Errorf("Register(%q) = %v; want a name error", name, err)
		}
	}
}

func TestRegisterDuplicateAndNil(t *testing.T) {
	r := probeRegistry(t)
	err := handlers.Register(r, "probe", newProbe)
	if err == nil || err.Error() != `register action type "probe": already registered` {
		t.Errorf("second Register = %v; want already registered", err)
	}
	if err := handlers.Register[probeConfig](r, "other", nil); err == nil || !strings.Contains(err.Error(), "nil build function") {
		t.Errorf("Register(nil) = %v; want nil build function error", err)
	}
	defer func() {
		if recover() == nil {
			t.Error("MustRegister of a duplicate did not panic")
		}
	}()
	handlers.MustRegister(r, "probe", newProbe)
}

func TestRegistryNamesSorted(t *testing.T) {
	r := handlers.NewRegistry()
	for _, n := range []string{"webhook", "log", "sql"} {
		handlers.MustRegister(r, n, newProbe)
	}
	if got := strings.Join(r.Names(), ","); got != "log,sql,webhook" {
		t.Errorf("Names = %s; want log,sql,webhook", got)
	}
}

func TestDecodeUnknownTypeListsKnown(t *testing.T) {
	r := probeRegistry(t)
	handlers.MustRegister(r, "log", newProbe)
	_, err := r.Decode("observers.x.actions[0]", config.Action{"type": "webhok", "url": "http://x"})
	want := `observers.x.actions[0].type: unknown action type "webhok" (known: log, probe)`
	if err == nil || err.Error() != want {
		t.Errorf("Decode = %v; want %q", err, want)
	}
	_, err = r.Decode("observers.x.actions[1]", config.Action{"url": "http://x"})
	want = `observers.x.actions[1].type: is required (one of log, probe)`
	if err == nil || err.Error() != want {
		t.Errorf("Decode without type = %v; want %q", err, want)
	}
}

func TestDecodeFieldErrorsNameTheirPath(t *testing.T) {
	r := probeRegistry(t)
	// Unknown keys are reported first; Validate runs on a section that
	// decodes.
	_, err := r.Decode("observers.x.actions[2]", config.Action{
		"type": "probe", "ulr": "http://x", "retry": map[string]any{"limt": int64(1)},
	})
	if err == nil {
		t.Fatal("Decode = nil error")
	}
	got := map[string]bool{}
	for _, e := range config.Errors(err) {
		got[e.Error()] = true
	}
	for _, want := range []string{
		`observers.x.actions[2].ulr: unknown key "ulr" (did you mean "url"?)`,
		`observers.x.actions[2].retry.limt: unknown key "limt" (did you mean "limit"?)`,
	} {
		if !got[want] {
			t.Errorf("Decode errors %q lack %q", err, want)
		}
	}
	_, err = r.Decode("observers.x.actions[2]", config.Action{"type": "probe", "method": "GET"})
	want := "observers.x.actions[2].method: must be POST or PUT, got \"GET\"\nobservers.x.actions[2].url: is required"
	if err == nil || err.Error() != want {
		t.Errorf("Decode = %v; want %q", err, want)
	}
	// A Validate error without a path gets the action's path.
	_, err = r.Decode("observers.x.actions[0]", config.Action{"type": "probe", "url": "u", "retry": map[string]any{"limit": int64(-1)}})
	if err == nil || err.Error() != "observers.x.actions[0]: retry.limit must not be negative" {
		t.Errorf("Decode = %v; want the action path in front", err)
	}
}

func TestDecodeAppliesDefaultsAndBuilds(t *testing.T) {
	r := probeRegistry(t)
	s, err := r.Decode("observers.x.actions[0]", config.Action{"type": "probe", "url": "http://x"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Type != "probe" || s.Path != "observers.x.actions[0]" || s.Hash == "" {
		t.Errorf("Spec = %+v", s)
	}
	a, err := r.Build(context.Background(), s, handlers.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if p := a.(*probe); p.cfg.Method != "POST" || p.cfg.URL != "http://x" {
		t.Errorf("built config = %+v; want the default method and the url", p.cfg)
	}
	s, err = r.Decode("observers.y.actions[3]", config.Action{"type": "probe", "url": "http://fail.build"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Build(context.Background(), s, handlers.Deps{})
	if err == nil || err.Error() != "observers.y.actions[3] (probe): cannot reach it" {
		t.Errorf("Build = %v; want the path and the type", err)
	}
}

func TestHash(t *testing.T) {
	a := map[string]any{"type": "webhook", "url": "http://x", "headers": map[string]any{"a": "1", "b": "2"}, "n": int64(3)}
	b := map[string]any{"n": int64(3), "headers": map[string]any{"b": "2", "a": "1"}, "url": "http://x", "type": "webhook"}
	if handlers.Hash(a) != handlers.Hash(b) {
		t.Errorf("Hash differs for the same fields in another order")
	}
	if h := handlers.Hash(a); len(h) != 32 || strings.Trim(h, "0123456789abcdef") != "" {
		t.Errorf("Hash = %q; want 32 hex digits", h)
	}
	seen := map[string]string{handlers.Hash(a): "original"}
	for name, change := range map[string]func(m map[string]any){
		"url":          func(m map[string]any) { m["url"] = "http://y" },
		"nested value": func(m map[string]any) { m["headers"].(map[string]any)["a"] = "9" },
		"number":       func(m map[string]any) { m["n"] = int64(4) },
		"extra field":  func(m map[string]any) { m["timeout"] = "1s" },
		"type":         func(m map[string]any) { m["type"] = "slack" },
	} {
		c := map[string]any{"type": "webhook", "url": "http://x", "headers": map[string]any{"a": "1", "b": "2"}, "n": int64(3)}
		change(c)
		h := handlers.Hash(c)
		if prev, dup := seen[h]; dup {
			t.Errorf("Hash after changing %s equals the hash of %s", name, prev)
		}
		seen[h] = name
	}
	// Hash is what Decode puts in the spec.
	r := probeRegistry(t)
	s, err := r.Decode("p", config.Action{"type": "probe", "url": "http://x"})
	if err != nil {
		t.Fatal(err)
	}
	if want := handlers.Hash(map[string]any{"url": "http://x", "type": "probe"}); s.Hash != want {
		t.Errorf("Spec.Hash = %s; want %s", s.Hash, want)
	}
}

func ExampleRegister() {
	r := handlers.NewRegistry()
	_ = handlers.Register(r, "probe", newProbe)
	_, err := r.Decode("observers.x.actions[0]", config.Action{"type": "probe", "url": "http://x", "metod": "PUT"})
	fmt.Println(err)
	// Output: observers.x.actions[0].metod: unknown key "metod" (did you mean "method"?)
}
