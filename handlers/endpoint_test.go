package handlers_test

import (
	"testing"

	"github.com/millrace/millrace/handlers"
)

func TestURLEndpoint(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"https://hooks.example.com/orders?token=x", "https://hooks.example.com"},
		{"HTTPS://Hooks.Example.COM:443/a", "https://hooks.example.com"},
		{"http://127.0.0.1:8080/a/b", "http://127.0.0.1:8080"},
		{"http://example.com:80", "http://example.com"},
		{"https://user:s3cret@example.com:8443/x#frag", "https://example.com:8443"},
		{"http://[::1]:9000/x", "http://[::1]:9000"},
		{"http://[::1]/x", "http://[::1]"},
		{"/relative/path", ""},
		{"not a url", ""},
		{"", ""},
	} {
		if got := handlers.URLEndpoint(tc.in); got != tc.want {
			t.Errorf("URLEndpoint(%q) = %q; want %q", tc.in, got, tc.want)
		}
	}
}

func TestServerEndpoint(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		scheme, host string
		port         int
		path, want   string
	}{
		{"smtp", "Mail.Example.com", 587, "", "smtp://mail.example.com:587"},
		{"redis", "10.0.0.5", 6379, "/2", "redis://10.0.0.5:6379/2"},
		{"postgres", "::1", 5432, "/shop", "postgres://[::1]:5432/shop"},
		{"postgres", "/var/run/postgresql", 0, "/shop", "postgres:///var/run/postgresql/shop"},
		{"smtp", "", 25, "", ""},
	} {
		if got := handlers.ServerEndpoint(tc.scheme, tc.host, tc.port, tc.path); got != tc.want {
			t.Errorf("ServerEndpoint(%q, %q, %d, %q) = %q; want %q", tc.scheme, tc.host, tc.port, tc.path, got, tc.want)
		}
	}
}
