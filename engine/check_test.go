package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/engine"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

// probeConfig is the action type these tests compile observers with: a
// required url and a method with a default, enough for Check to report
// a missing field and a misspelt one.
type probeConfig struct {
	URL    string `koanf:"url"`
	Method string `koanf:"method"`
}

func (c *probeConfig) SetDefaults() { c.Method = "POST" }

func (c probeConfig) Validate() error {
	if c.URL == "" {
		return config.Errorf("url", "is required")
	}
	return nil
}

type probe struct{}

func (probe) Execute(context.Context, *event.Event) error { return nil }

func probeRegistry(t *testing.T) *handlers.Registry {
	t.Helper()
	r := handlers.NewRegistry()
	err := handlers.Register(r, "probe", func(context.Context, probeConfig, handlers.Deps) (handlers.Action, error) {
		return probe{}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestCheckWholeConfig(t *testing.T) {
	cfg, err := config.Parse([]byte(`
[observers.a]
actions = [{ type = "probe", url = "http://x", mehtod = "PUT" }, { type = "nope" }]

[observers.b]
condition = "data.x =="
actions = [{ type = "probe" }]
`), nil)
	if err != nil {
		t.Fatalf("config.Parse: %v", err)
	}
	err = engine.Check(cfg, probeRegistry(t), config.Features{})
	var got []string
	for _, e := range config.Errors(err) {
		got = append(got, e.Error())
	}
	want := []string{
		`observers.a.actions[0].mehtod: unknown key "mehtod" (did you mean "method"?)`,
		`observers.a.actions[1].type: unknown action type "nope" (known: probe)`,
		`observers.b.actions[0].url: is required`,
		`observers.b.condition: does not compile at 1:9: unexpected token EOF`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Check errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// needsConfig is an action type that needs a [databases.NAME] section
// and a bus with topics: a handlers.ConfigChecker.
type needsConfig struct {
	Database string `koanf:"database"`
}

func (needsConfig) Validate() error { return nil }

func (c needsConfig) CheckConfig(cfg *config.Config, f config.Features) error {
	var errs []error
	if _, ok := cfg.Databases[c.Database]; !ok {
		errs = append(errs, config.Errorf("database", "%q is not configured", c.Database))
	}
	if !f.Topics {
		errs = append(errs, errors.New("the bus has no topics"))
	}
	return errors.Join(errs...)
}

var _ handlers.ConfigChecker = needsConfig{}

// TestCheckCallsConfigChecker: Check hands a ConfigChecker the whole
// config and the topology's features, and puts the action's path in
// front of its errors (the action's own path when an error has none).
func TestCheckCallsConfigChecker(t *testing.T) {
	r := probeRegistry(t)
	handlers.MustRegister(r, "needs", func(context.Context, needsConfig, handlers.Deps) (handlers.Action, error) {
		return probe{}, nil
	})
	cfg, err := config.Parse([]byte(`
[databases.main]
url = "postgres://x"

[observers.a]
actions = [{ type = "needs", database = "main" }, { type = "needs", database = "reports" }, { type = "probe", url = "http://x" }]
`), nil)
	if err != nil {
		t.Fatalf("config.Parse: %v", err)
	}
	check := func(f config.Features) string {
		var got []string
		for _, e := range config.Errors(engine.Check(cfg, r, f)) {
			got = append(got, e.Error())
		}
		return strings.Join(got, "\n")
	}
	if got, want := check(config.Features{Topics: true}), `observers.a.actions[1].database: "reports" is not configured`; got != want {
		t.Errorf("Check with topics:\n%s\nwant:\n%s", got, want)
	}
	want := strings.Join([]string{
		`observers.a.actions[0]: the bus has no topics`,
		`observers.a.actions[1]: the bus has no topics`,
		`observers.a.actions[1].database: "reports" is not configured`,
	}, "\n")
	if got := check(config.Features{}); got != want {
		t.Errorf("Check without topics:\n%s\nwant:\n%s", got, want)
	}
	// Compile builds without the cross-section checks: the build
	// functions check what they use.
	if _, err := engine.Compile(context.Background(), cfg, r, handlers.Deps{}); err != nil {
		t.Errorf("Compile: %v", err)
	}
}
