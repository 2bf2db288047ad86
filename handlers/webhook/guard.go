package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// ErrBlocked is wrapped by the error of a connection the Guard refused.
// A refused request is a permanent failure: retrying reaches the same
// address.
var ErrBlocked = errors.New("destination address not allowed")

// Guard refuses outbound connections to loopback, private (RFC 1918, IPv6
// ULA), link-local (cloud metadata at 169.254.169.254 included), CGNAT,
// unspecified, multicast and reserved addresses, and to IPv4-mapped,
// NAT64 and 6to4 forms of those. It checks every address a host name
// resolves to, at dial time, then dials only the checked addresses, so a
// DNS answer that changes between checks (rebinding) cannot slip through.
//
// A Guard is safe for concurrent use. The zero value is a working guard.
type Guard struct {
	// AllowPrivate turns the check off: for development against local
	// receivers only.
	AllowPrivate bool
	// Resolve looks up the addresses of host. Nil uses
	// net.DefaultResolver. Tests set it to make a name resolve anywhere.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// Dial connects to one already checked "ip:port". Nil uses a
	// net.Dialer that checks the address once more just before connect.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// DialContext resolves the host of addr, refuses it with an error
// wrapping ErrBlocked if any of its addresses is not public (unless
// AllowPrivate), and otherwise dials its addresses in turn. Its signature
// is that of http.Transport.DialContext.
func (g *Guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else {
		ips, err = g.resolve(ctx, host)
		if err != nil {
			return nil, err
		}
		if len(ips) == 0 {
			return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
		}
	}
	if !g.AllowPrivate {
		// One private answer refuses the host: a name that mixes public
		// and private addresses is not one to trust.
		for _, ip := range ips {
			if !Public(ip) {
				return nil, fmt.Errorf("%w: %s resolves to %s, a private or reserved address (allow_private is off)", ErrBlocked, host, ip.WithZone(""))
			}
		}
	}
	var errs []error
	for _, ip := range ips {
		if !fits(network, ip) {
			continue
		}
		c, err := g.dial(ctx, network, ip.String(), port)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("dial %s: no %s address for %s", network, network, host)
	}
	return nil, errors.Join(errs...)
}

func (g *Guard) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if g.Resolve != nil {
		return g.Resolve(ctx, host)
	}
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

func (g *Guard) dial(ctx context.Context, network, ip, port string) (net.Conn, error) {
	addr := net.JoinHostPort(ip, port)
	if g.Dial != nil {
		return g.Dial(ctx, network, addr)
	}
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	if !g.AllowPrivate {
		d.Control = checkConnect
	}
	return d.DialContext(ctx, network, addr)
}

// checkConnect re-checks the address the socket is about to connect to,
// as a second line behind the resolution check.
func checkConnect(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse %q", ErrBlocked, address)
	}
	if !Public(ap.Addr()) {
		return fmt.Errorf("%w: %s is a private or reserved address (allow_private is off)", ErrBlocked, ap.Addr().WithZone(""))
	}
	return nil
}

func fits(network string, ip netip.Addr) bool {
	switch network {
	case "tcp4", "udp4":
		return ip.Unmap().Is4()
	case "tcp6", "udp6":
		return ip.Is6() && !ip.Is4In6()
	}
	return true
}

var (
	// reserved lists the blocked ranges the netip predicates do not cover.
	reserved = []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),       // "this network"
		netip.MustParsePrefix("100.64.0.0/10"),   // CGNAT
		netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
		netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
		netip.MustParsePrefix("240.0.0.0/4"),     // reserved, broadcast included
		netip.MustParsePrefix("::/96"),           // IPv4-compatible (deprecated), ::1 and :: included
		netip.MustParsePrefix("fec0::/10"),       // site-local (deprecated)
		netip.MustParsePrefix("100::/64"),        // discard-only
		netip.MustParsePrefix("2001:db8::/32"),   // documentation
		netip.MustParsePrefix("::ffff:0:0:0/96"), // IPv4-translated
	}
	nat64   = netip.MustParsePrefix("64:ff9b::/96")
	sixTo4  = netip.MustParsePrefix("2002::/16")
	nat64L  = netip.MustParsePrefix("64:ff9b:1::/48")
	teredo  = netip.MustParsePrefix("2001::/32")
	orchid2 = netip.MustParsePrefix("2001:20::/28")
)

// Public reports whether ip is a public unicast address, one the Guard
// lets through. IPv4 addresses embedded in IPv6 (mapped, NAT64, 6to4)
// are judged by the IPv4 address they carry.
func Public(ip netip.Addr) bool {
	ip = ip.WithZone("").Unmap()
	if !ip.IsValid() || ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() ||
		ip.IsMulticast() || ip.IsUnspecified() {
		return false
	}
	for _, p := range reserved {
		if p.Contains(ip) {
			return false
		}
	}
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64.Contains(ip):
			return Public(netip.AddrFrom4([4]byte(b[12:16])))
		case sixTo4.Contains(ip):
			return Public(netip.AddrFrom4([4]byte(b[2:6])))
		case nat64L.Contains(ip), teredo.Contains(ip), orchid2.Contains(ip):
			// Local-use NAT64 and Teredo carry addresses that cannot be
			// judged from here.
			return false
		}
	}
	return true
}

// NewTransport returns the pooled transport of one action: keep-alive,
// up to 256 idle connections per host, every connection through g (nil: a
// Guard with private addresses refused), and no proxy from the
// environment, since a proxy would hide the destination from the guard.
// Close it with CloseIdleConnections.
func NewTransport(g *Guard) *http.Transport {
	if g == nil {
		g = &Guard{}
	}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           g.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// NewClient wraps NewTransport(g) in a client with an overall timeout per
// request that does not follow redirects (a 3xx is returned as it is),
// for code that needs an *http.Client. The actions of this package and of
// handlers/slack use the transport directly with Do.
func NewClient(timeout time.Duration, g *Guard) *http.Client {
	return &http.Client{
		Transport: NewTransport(g),
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}
