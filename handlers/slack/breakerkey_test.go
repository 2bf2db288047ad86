package slack_test

import (
	"testing"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/middleware"
)

// The breaker key is the incoming webhook's host: its path, which holds
// the token, is left out.
func TestBreakerKeyIsTheHost(t *testing.T) {
	t.Parallel()
	a := build(t, config.Action{"type": "slack", "url_env": setEnv(t, "https://hooks.slack.com/services/T0/B0/S3CR3T")})
	k, ok := a.(middleware.BreakerKeyer)
	if !ok {
		t.Fatalf("%T does not implement middleware.BreakerKeyer", a)
	}
	if got, want := k.BreakerKey(), "https://hooks.slack.com"; got != want {
		t.Errorf("BreakerKey() = %q; want %q", got, want)
	}
}
