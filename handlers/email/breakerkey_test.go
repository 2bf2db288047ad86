package email_test

import (
	"testing"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/middleware"
)

// The breaker key is the SMTP server, without its credentials.
func TestBreakerKeyIsTheServer(t *testing.T) {
	t.Parallel()
	cfg := smtpConfig(2525)
	cfg.SMTP.Host = "Mail.Example.com"
	a := build(t, cfg, config.Action{"to": []any{"ops@example.com"}, "subject": "s", "body": "b"})
	k, ok := a.(middleware.BreakerKeyer)
	if !ok {
		t.Fatalf("%T does not implement middleware.BreakerKeyer", a)
	}
	if got, want := k.BreakerKey(), "smtp://mail.example.com:2525"; got != want {
		t.Errorf("BreakerKey() = %q; want %q", got, want)
	}
}
