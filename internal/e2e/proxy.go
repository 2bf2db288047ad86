package e2e

import (
	"strconv"
	"sync"
	"testing"

	"github.com/millrace/millrace/internal/tcpproxy"
	"github.com/millrace/millrace/internal/testenv"
)

// Proxy forwards TCP connections from a port of its own to a service,
// so that a test can make the service appear after millrace, or vanish
// and come back, without touching the shared server: while the proxy is
// closed, nothing listens on its port and connections are refused, as
// by a service that is not running.
type Proxy struct {
	t    testing.TB
	port int
	px   *tcpproxy.Proxy

	mu    sync.Mutex
	ended bool // the test ended: Open does nothing
}

// NewProxy returns a closed proxy to target ("127.0.0.1:5432") on a free
// port. It closes for good when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	p := &Proxy{t: t, port: testenv.FreePort(t), px: tcpproxy.New(target)}
	t.Cleanup(func() {
		p.mu.Lock()
		p.ended = true
		p.mu.Unlock()
		p.Close()
	})
	return p
}

// Addr is 127.0.0.1:port, where the service appears while the proxy is
// open.
func (p *Proxy) Addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }

// Open starts listening and forwarding. It may run on any goroutine: a
// port taken meanwhile fails the test with Errorf.
func (p *Proxy) Open() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ended {
		return
	}
	if err := p.px.Listen(p.Addr()); err != nil {
		p.t.Errorf("e2e: %v", err)
	}
}

// Close stops listening and cuts every connection, as a service that
// dies; Open brings it back on the same port.
func (p *Proxy) Close() { p.px.Close() }
