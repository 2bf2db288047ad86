package handlers

import (
	"net"
	"net/url"
	"strconv"
	"strings"
)

// An action that knows which endpoint it calls has a method
//
//	BreakerKey() string
//
// returning the endpoint's name, e.g. "https://hooks.example.com": every
// action of the process that returns the same name shares one circuit
// breaker, so that observers calling one dead host stop calling it
// together. The name labels millrace_breaker_state, so it must not hold
// credentials; "" (or no such method) gives the action a breaker of its
// own. The built-in actions name their host, SMTP server, database or
// Redis server with the functions below.

// URLEndpoint names the endpoint of an absolute URL: scheme://host, with
// the port when it is not the scheme's default, lowercase. User info,
// path, query and fragment, which may hold tokens, are left out. It
// returns "" for anything that is not an absolute URL with a host.
func URLEndpoint(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return ""
	}
	scheme := strings.ToLower(u.Scheme)
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if host == "" {
		return ""
	}
	if port == defaultPorts[scheme] {
		port = ""
	}
	return scheme + "://" + hostPort(host, port)
}

// defaultPorts are the ports URLEndpoint leaves out.
var defaultPorts = map[string]string{"http": "80", "https": "443"}

// ServerEndpoint names a server reached at host and port under scheme:
// "smtp://mail.example.com:587", "redis://10.0.0.5:6379/2" with path
// "/2". It returns "" when host is empty.
func ServerEndpoint(scheme, host string, port int, path string) string {
	if host == "" {
		return ""
	}
	p := ""
	if port > 0 {
		p = strconv.Itoa(port)
	}
	return scheme + "://" + hostPort(strings.ToLower(host), p) + path
}

func hostPort(host, port string) string {
	if port == "" {
		if strings.Contains(host, ":") {
			return "[" + host + "]" // IPv6
		}
		return host
	}
	return net.JoinHostPort(host, port)
}
