package webhook

import (
	"errors"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/handlers"
)

// Config is the webhook action's section.
type Config struct {
	// URL is the destination, a template over the event (an absolute
	// http or https URL once rendered). Exactly one of URL and URLEnv is
	// required.
	URL string `koanf:"url"`
	// URLEnv names the variable that holds the URL, for URLs that carry a
	// token. Its value is used as it is, not as a template.
	URLEnv string `koanf:"url_env"`
	// Method is GET, POST, PUT, PATCH or DELETE. Default POST.
	Method string `koanf:"method"`
	// Headers maps header names to value templates. Content-Type defaults
	// to application/json; the signature and idempotency headers are set
	// by the action and cannot be overridden.
	Headers map[string]string `koanf:"headers"`
	// Body is a template for the request body. Default: the event
	// envelope as JSON (no body for GET).
	Body string `koanf:"body"`
	// BodyFormat is json (default) or text. A json body is escaped by
	// context, so it stays valid JSON whatever the event holds; a text
	// body is rendered as it is. It also picks the default Content-Type.
	BodyFormat string `koanf:"body_format"`
	// Timeout bounds one request, answer included. Default 10s.
	Timeout config.Duration `koanf:"timeout"`
	// SecretEnv names the variable that holds the Standard Webhooks
	// signing secret, as "whsec_<base64>" or raw. Unset: requests are not
	// signed.
	SecretEnv string `koanf:"secret_env"`
	// AllowPrivate lets requests reach loopback, private and link-local
	// addresses. Default false; for development only.
	AllowPrivate bool `koanf:"allow_private"`
}

// DefaultTimeout is the default of Config.Timeout.
const DefaultTimeout = 10 * time.Second

// SetDefaults fills the defaults.
func (c *Config) SetDefaults() {
	c.Method = "POST"
	c.BodyFormat = "json"
	c.Timeout = config.Duration(DefaultTimeout)
}

var methods = []string{"GET", "POST", "PUT", "PATCH", "DELETE"}

// reservedHeaders are set by the action or by net/http; a configured value
// would be ignored or would break the signature.
var reservedHeaders = map[string]bool{
	"Webhook-Id": true, "Webhook-Timestamp": true, "Webhook-Signature": true,
	"Idempotency-Key": true, "Content-Length": true, "Host": true,
	"Transfer-Encoding": true, "Connection": true,
}

// Validate checks every field and compiles the templates, without I/O.
func (c Config) Validate() error {
	var errs []error
	switch {
	case c.URL == "" && c.URLEnv == "":
		errs = append(errs, config.Errorf("url", "is required (or url_env naming a variable that holds it)"))
	case c.URL != "" && c.URLEnv != "":
		errs = append(errs, config.Errorf("url", "set either url or url_env, not both"))
	case c.URL != "":
		if _, err := handlers.CompileTemplate("url", c.URL); err != nil {
			errs = append(errs, config.Errorf("url", "%v", err))
		} else if !isTemplate(c.URL) {
			if err := checkURL(c.URL); err != nil {
				errs = append(errs, config.Errorf("url", "%v", err))
			}
		}
	}
	if _, ok := normMethod(c.Method); !ok {
		errs = append(errs, config.Errorf("method", "must be one of %s, got %q", strings.Join(methods, ", "), c.Method))
	}
	for _, name := range sortedKeys(c.Headers) {
		path := "headers." + name
		if !validHeaderName(name) {
			errs = append(errs, config.Errorf(path, "is not a valid header name"))
			continue
		}
		if reservedHeaders[http.CanonicalHeaderKey(name)] {
			errs = append(errs, config.Errorf(path, "is set by the action and cannot be configured"))
			continue
		}
		v := c.Headers[name]
		if _, err := handlers.CompileTemplate(path, v); err != nil {
			errs = append(errs, config.Errorf(path, "%v", err))
		} else if !isTemplate(v) && !validHeaderValue(v) {
			errs = append(errs, config.Errorf(path, "must not contain control characters such as CR, LF or NUL"))
		}
	}
	switch c.BodyFormat {
	case "json", "text":
		if c.Body != "" {
			if _, err := c.compileBody(); err != nil {
				errs = append(errs, config.Errorf("body", "%v", err))
			}
		}
	default:
		errs = append(errs, config.Errorf("body_format", "%q is not one of json, text", c.BodyFormat))
	}
	if c.Timeout <= 0 {
		errs = append(errs, config.Errorf("timeout", "must be positive, got %s", c.Timeout))
	}
	return errors.Join(errs...)
}

func (c Config) compileBody() (*handlers.Template, error) {
	if c.BodyFormat == "text" {
		return handlers.CompileTemplate("body", c.Body)
	}
	return handlers.CompileJSONTemplate("body", c.Body)
}

// isTemplate tells a template from a literal: a literal needs no
// rendering per event and can be checked at load.
func isTemplate(s string) bool { return strings.Contains(s, "{{") }

// checkURL accepts absolute http and https URLs with a host. Its errors
// never repeat the URL, which may hold a token.
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("is not a valid URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return errors.New("must be an absolute http or https URL")
	}
	if u.Host == "" {
		return errors.New("has no host")
	}
	return nil
}

func normMethod(m string) (string, bool) {
	u := strings.ToUpper(m)
	for _, x := range methods {
		if u == x {
			return x, true
		}
	}
	return "", false
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// validHeaderName reports whether name is an RFC 9110 token.
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// validHeaderValue refuses control characters other than tab: CR and LF
// would split the header (injection), NUL is refused by servers.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
