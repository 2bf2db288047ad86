package webhook_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/webhook"
)

// fakeDNS resolves every name to addrs; dials only count, never connect.
type fakeDNS struct {
	addrs   []netip.Addr
	dials   atomic.Int64
	dialled atomic.Value // last "ip:port" dialled
}

func (f *fakeDNS) guard(allowPrivate bool) *webhook.Guard {
	return &webhook.Guard{
		AllowPrivate: allowPrivate,
		Resolve: func(context.Context, string) ([]netip.Addr, error) {
			return f.addrs, nil
		},
		Dial: func(_ context.Context, _, addr string) (net.Conn, error) {
			f.dials.Add(1)
			f.dialled.Store(addr)
			return nil, errors.New("test dialer: not connecting")
		},
	}
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// A host name that resolves to a private address is refused before any
// connection, through the same client the actions use.
func TestGuardRefusesPrivateResolutions(t *testing.T) {
	t.Parallel()
	for _, ip := range []string{
		"10.0.0.1", "172.16.5.4", "192.168.1.1", // RFC 1918
		"127.0.0.1", "127.8.9.10", "::1", // loopback
		"169.254.169.254", "169.254.1.1", "fe80::1", // link-local, cloud metadata
		"100.64.0.1", "100.127.255.254", // CGNAT
		"0.0.0.0", "0.1.2.3", "::", // unspecified, "this network"
		"224.0.0.1", "239.255.255.250", "ff02::1", // multicast
		"fd00::1", "fc00::1", // ULA
		"::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", // IPv4-mapped
		"64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", // NAT64 of metadata, loopback
		"2002:7f00:1::1", "2002:a00:1::1", // 6to4 of loopback, 10/8
		"255.255.255.255", "240.0.0.1", "198.18.0.1", // reserved
	} {
		t.Run(ip, func(t *testing.T) {
			t.Parallel()
			dns := &fakeDNS{addrs: addrs(ip)}
			tr := webhook.NewTransport(dns.guard(false))
			defer tr.CloseIdleConnections()
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://evil.test/hook", strings.NewReader("{}"))
			err := webhook.Do(tr, req)
			if !errors.Is(err, webhook.ErrBlocked) || !errors.Is(err, handlers.ErrPermanent) {
				t.Fatalf("Do = %v; want a permanent ErrBlocked", err)
			}
			if n := dns.dials.Load(); n != 0 {
				t.Fatalf("the guard dialled %d times; want 0", n)
			}
		})
	}
}

func TestGuardRefusesMixedAnswers(t *testing.T) {
	t.Parallel()
	// A public address next to a private one: the host is refused.
	dns := &fakeDNS{addrs: addrs("93.184.216.34", "10.0.0.1")}
	_, err := dns.guard(false).DialContext(t.Context(), "tcp", "evil.test:443")
	if !errors.Is(err, webhook.ErrBlocked) || dns.dials.Load() != 0 {
		t.Fatalf("DialContext = %v after %d dials; want ErrBlocked and no dial", err, dns.dials.Load())
	}
}

func TestGuardLetsPublicThrough(t *testing.T) {
	t.Parallel()
	for _, ip := range []string{"93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"} {
		dns := &fakeDNS{addrs: addrs(ip)}
		_, err := dns.guard(false).DialContext(t.Context(), "tcp", "good.test:443")
		if errors.Is(err, webhook.ErrBlocked) {
			t.Fatalf("%s: refused: %v", ip, err)
		}
		if dns.dials.Load() != 1 {
			t.Fatalf("%s: dialled %d times; want 1", ip, dns.dials.Load())
		}
		// The checked address is dialled, not the name (no second lookup).
		want := net.JoinHostPort(netip.MustParseAddr(ip).String(), "443")
		if got := dns.dialled.Load(); got != want {
			t.Errorf("%s: dialled %v; want %s", ip, got, want)
		}
	}
}

func TestGuardAllowPrivate(t *testing.T) {
	t.Parallel()
	dns := &fakeDNS{addrs: addrs("10.0.0.1")}
	_, err := dns.guard(true).DialContext(t.Context(), "tcp", "evil.test:80")
	if errors.Is(err, webhook.ErrBlocked) || dns.dials.Load() != 1 {
		t.Fatalf("with AllowPrivate: err = %v after %d dials; want one dial", err, dns.dials.Load())
	}
}

// Each answer of the resolver is checked on each new connection: a name
// that resolves public first and private next (DNS rebinding) is refused
// the second time.
func TestGuardChecksEveryResolution(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	g := &webhook.Guard{
		Resolve: func(context.Context, string) ([]netip.Addr, error) {
			if n.Add(1) == 1 {
				return addrs("93.184.216.34"), nil
			}
			return addrs("127.0.0.1"), nil
		},
		Dial: func(context.Context, string, string) (net.Conn, error) {
			return nil, errors.New("test dialer: not connecting")
		},
	}
	if _, err := g.DialContext(t.Context(), "tcp", "rebind.test:80"); errors.Is(err, webhook.ErrBlocked) {
		t.Fatalf("first resolution (public) refused: %v", err)
	}
	if _, err := g.DialContext(t.Context(), "tcp", "rebind.test:80"); !errors.Is(err, webhook.ErrBlocked) {
		t.Fatalf("second resolution (loopback): err = %v; want ErrBlocked", err)
	}
}

func TestPublic(t *testing.T) {
	t.Parallel()
	for ip, want := range map[string]bool{
		"1.1.1.1": true, "93.184.216.34": true, "2a00:1450:4001::1": true,
		"10.1.2.3": false, "fe80::1%eth0": false, "::ffff:192.168.0.1": false, "100.64.0.0": false,
		"192.0.0.8": false, "2001:db8::1": false,
	} {
		if got := webhook.Public(netip.MustParseAddr(ip)); got != want {
			t.Errorf("Public(%s) = %v; want %v", ip, got, want)
		}
	}
}

// The action, with real resolution: a loopback receiver is refused
// unless allow_private, by IP literal and by name.
func TestLoopbackReceiver(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	_, port, _ := net.SplitHostPort(rc.Listener.Addr().String())
	for _, url := range []string{rc.URL, "http://localhost:" + port, "http://[::ffff:127.0.0.1]:" + port} {
		a := build(t, config.Action{"type": "webhook", "url": url})
		err := a.Execute(t.Context(), newEvent())
		if !errors.Is(err, webhook.ErrBlocked) || !errors.Is(err, handlers.ErrPermanent) {
			t.Errorf("%s without allow_private: err = %v; want a permanent ErrBlocked", url, err)
		}
	}
	if n := len(rc.requests()); n != 0 {
		t.Fatalf("receiver got %d requests without allow_private; want 0", n)
	}
	a := build(t, config.Action{"type": "webhook", "url": rc.URL, "allow_private": true})
	if err := a.Execute(t.Context(), newEvent()); err != nil {
		t.Fatalf("with allow_private: %v", err)
	}
	if n := len(rc.requests()); n != 1 {
		t.Fatalf("receiver got %d requests with allow_private; want 1", n)
	}
}

func TestMetadataAddressRefused(t *testing.T) {
	t.Parallel()
	a := build(t, config.Action{"type": "webhook", "url": "http://169.254.169.254/latest/meta-data/", "timeout": "2s"})
	err := a.Execute(t.Context(), newEvent())
	if !errors.Is(err, webhook.ErrBlocked) || !errors.Is(err, handlers.ErrPermanent) {
		t.Fatalf("err = %v; want a permanent ErrBlocked", err)
	}
}

// NewClient, for code that wants an *http.Client: guarded, and it does
// not follow redirects.
func TestNewClient(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Location", "/elsewhere")
		w.WriteHeader(http.StatusFound)
	})
	c := webhook.NewClient(5*time.Second, nil)
	defer c.CloseIdleConnections()
	if _, err := c.Get(rc.URL); !errors.Is(err, webhook.ErrBlocked) {
		t.Fatalf("default guard: Get(loopback) = %v; want ErrBlocked", err)
	}
	c = webhook.NewClient(5*time.Second, &webhook.Guard{AllowPrivate: true})
	defer c.CloseIdleConnections()
	resp, err := c.Get(rc.URL)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusFound || len(rc.requests()) != 1 {
		t.Fatalf("status %d after %d requests; want 302 after 1 (no redirect followed)", resp.StatusCode, len(rc.requests()))
	}
}
