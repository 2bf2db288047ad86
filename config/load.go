package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"

	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"
)

// EnvPrefix starts every environment variable that overrides a key;
// "__" separates levels: MILLRACE_REDIS__URL sets redis.url.
const EnvPrefix = "MILLRACE_"

// Load reads the TOML file at path (none when path is empty), applies
// MILLRACE_ environment overrides, decodes the result onto the defaults
// and validates it. It returns every problem at once.
func Load(path string) (*Config, error) {
	var data []byte
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		data = b
	}
	return Parse(data, os.Environ())
}

// Parse is Load on the bytes of a TOML file and a list of "KEY=value"
// environment entries.
func Parse(data []byte, environ []string) (*Config, error) {
	k := koanf.New(".")
	if len(data) > 0 {
		if err := k.Load(rawbytes.Provider(data), toml.Parser()); err != nil {
			return nil, &Error{Msg: "parse TOML: " + err.Error()}
		}
	}
	var errs []error
	top := Keys(reflect.TypeFor[Config]())
	envOpt := env.Opt{
		Prefix:      EnvPrefix,
		EnvironFunc: func() []string { return environ },
		TransformFunc: func(name, value string) (string, any) {
			path := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, EnvPrefix)), "__", ".")
			first, _, nested := strings.Cut(path, ".")
			if contains(top, first) {
				return path, value
			}
			// A variable without "__" may be a secret that a *_env key
			// names (MILLRACE_ADMIN_TOKEN); only one with "__" must be a
			// key path.
			if nested {
				msg := fmt.Sprintf("unknown key %q", first)
				if s := suggest(first, top); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				errs = append(errs, &Error{Path: path, Msg: msg + " (from environment variable " + name + ")"})
			}
			return "", nil
		},
	}
	if err := k.Load(env.Provider(".", envOpt), nil); err != nil {
		return nil, fmt.Errorf("read environment: %w", err)
	}
	cfg := Default()
	if err := Decode(k.Raw(), cfg, ""); err != nil {
		errs = append(errs, err)
	}
	// Validate even after decode errors, so that one run reports every
	// problem; a key that failed to decode is not reported twice.
	bad := map[string]bool{}
	for _, e := range Errors(errors.Join(errs...)) {
		bad[pathOf(e)] = true
	}
	for _, e := range Errors(cfg.Validate()) {
		if !bad[pathOf(e)] {
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		return cfg, errors.Join(errs...)
	}
	return cfg, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
