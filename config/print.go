package config

import (
	"net/url"
	"reflect"
	"strings"

	"github.com/knadh/koanf/parsers/toml/v2"
)

// Masked is what secrets print as.
const Masked = "REDACTED"

// TOML renders the effective config as TOML with secrets masked: the
// password of every URL, and every key that looks like a secret.
func (c *Config) TOML() ([]byte, error) {
	m := toMap(reflect.ValueOf(c).Elem()).(map[string]any)
	return toml.Parser().Marshal(m)
}

func toMap(v reflect.Value) any {
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == durationType {
			return v.Interface().(Duration).String()
		}
		out := map[string]any{}
		for k, i := range structFields(v.Type()) {
			if x := toMap(v.Field(i)); x != nil {
				out[k] = mask(k, x)
			}
		}
		return out
	case reflect.Map:
		if v.Len() == 0 {
			return nil
		}
		out := map[string]any{}
		iter := v.MapRange()
		for iter.Next() {
			k := iter.Key().String()
			out[k] = mask(k, toMap(iter.Value()))
		}
		return out
	case reflect.Slice:
		if v.Len() == 0 {
			return nil
		}
		out := make([]any, v.Len())
		for i := range v.Len() {
			out[i] = toMap(v.Index(i))
		}
		return out
	case reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return toMap(v.Elem())
	}
	return v.Interface()
}

func mask(key string, v any) any {
	s, ok := v.(string)
	if !ok {
		return v
	}
	if strings.HasSuffix(key, "_env") {
		return s // the name of a variable, not its value
	}
	for _, w := range []string{"secret", "password", "token"} {
		if strings.Contains(key, w) && s != "" {
			return Masked
		}
	}
	return MaskURL(s)
}

// MaskURL replaces the password of a URL with REDACTED; other strings are
// returned as they are.
func MaskURL(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), Masked)
	}
	return u.String()
}
