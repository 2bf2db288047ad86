package config

import (
	"net/url"
	"reflect"
	"regexp"
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
	if h, ok := v.(map[string]any); ok && key == "headers" {
		return maskHeaders(h)
	}
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

// maskHeaders masks the literal values of the headers of an action
// (webhook, Slack) whose names carry credentials: Authorization,
// Cookie, X-Api-Key and the like. A value holding a template is
// printed: it names where the secret comes from ({{ env "X" }}) but is
// not the secret.
func maskHeaders(h map[string]any) map[string]any {
	for name, v := range h {
		s, ok := v.(string)
		if !ok || s == "" || strings.Contains(s, "{{") {
			continue
		}
		if SecretHeader(name) {
			h[name] = Masked
		}
	}
	return h
}

// SecretHeader reports whether a header named name carries a credential:
// Authorization, Proxy-Authorization, Cookie, or a name such as
// X-Api-Key or X-Auth-Token (see secretParam).
func SecretHeader(name string) bool {
	switch strings.ToLower(name) {
	case "authorization", "proxy-authorization", "cookie":
		return true
	}
	return secretParam(name)
}

// PostgreSQL keyword/value connection strings ("host=db password=x"),
// which pgx accepts wherever a URL goes.
var (
	dsnStart    = regexp.MustCompile(`^\s*[a-z_]+\s*=`)
	dsnPassword = regexp.MustCompile(`(\bpassword\s*=\s*)('(?:\\.|[^'])*'|\S+)`)
)

// MaskURL replaces the password of a URL, and the values of its query
// parameters that carry credentials (see secretParam), with REDACTED; it
// masks each URL of a comma-separated list (nats.url) and the password
// of a PostgreSQL keyword/value string. Other strings are returned as
// they are. Webhook and API URLs often carry their token in the query
// string, where a key name cannot tell.
func MaskURL(s string) string {
	if !strings.Contains(s, "://") {
		if dsnStart.MatchString(s) {
			return dsnPassword.ReplaceAllString(s, "${1}"+Masked)
		}
		return s
	}
	if strings.Count(s, "://") > 1 && strings.Contains(s, ",") {
		parts := strings.Split(s, ",")
		for i, p := range parts {
			parts[i] = MaskURL(p)
		}
		return strings.Join(parts, ",")
	}
	u, err := url.Parse(s)
	if err != nil {
		return s
	}
	masked := false
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User, masked = url.UserPassword(u.User.Username(), Masked), true
		}
	}
	if u.RawQuery != "" {
		// Parameter by parameter, so that the order and the encoding of
		// the others stay as written.
		params := strings.Split(u.RawQuery, "&")
		for i, p := range params {
			name, _, hasValue := strings.Cut(p, "=")
			if n, err := url.QueryUnescape(name); err == nil && hasValue && secretParam(n) {
				params[i], masked = name+"="+Masked, true
			}
		}
		u.RawQuery = strings.Join(params, "&")
	}
	if !masked {
		return s
	}
	return u.String()
}

// secretParam reports whether a query parameter named name carries a
// credential: token, key, secret, password, sig, signature, api_key,
// access_token, apikey and the like, in any case.
func secretParam(name string) bool {
	n := strings.ToLower(name)
	switch n {
	case "key", "sig", "pwd", "passwd", "auth":
		return true
	}
	for _, w := range []string{"token", "secret", "password", "signature", "apikey", "api_key", "api-key", "credential"} {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}
