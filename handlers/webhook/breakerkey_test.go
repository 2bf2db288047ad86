package webhook_test

import (
	"testing"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/middleware"
)

// The breaker key is the host the action posts to, without credentials,
// path or query: every webhook to one host shares its circuit breaker.
func TestBreakerKeyIsTheHost(t *testing.T) {
	t.Parallel()
	env := setEnv(t, "https://bot:s3cret@Hooks.Example.com:8443/orders?token=t0k3n")
	for _, tc := range []struct {
		name string
		raw  config.Action
		want string
	}{
		{"literal", config.Action{"url": "https://hooks.example.com/orders"}, "https://hooks.example.com"},
		{"default port", config.Action{"url": "http://hooks.example.com:80/a"}, "http://hooks.example.com"},
		{"template after the host", config.Action{"url": "https://hooks.example.com/orders/{{ .entity_id }}"}, "https://hooks.example.com"},
		{"template in the host", config.Action{"url": "https://{{ .data.tenant }}.example.com/orders"}, ""},
		{"template in the port", config.Action{"url": "https://hooks.example.com:{{ .data.port }}/orders"}, ""},
		{"url_env with credentials", config.Action{"url_env": env}, "https://hooks.example.com:8443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.raw["type"] = "webhook"
			a := build(t, tc.raw)
			k, ok := a.(middleware.BreakerKeyer)
			if !ok {
				t.Fatalf("%T does not implement middleware.BreakerKeyer", a)
			}
			if got := k.BreakerKey(); got != tc.want {
				t.Errorf("BreakerKey() = %q; want %q", got, tc.want)
			}
		})
	}
}
