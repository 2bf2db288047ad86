package e2e

import (
	"io"
	"net"
	"strconv"
	"sync"
	"testing"

	"github.com/millrace/millrace/internal/testenv"
)

// Proxy forwards TCP connections from a port of its own to a service,
// so that a test can make the service appear after millrace, or vanish
// and come back, without touching the shared server: while the proxy is
// closed, nothing listens on its port and connections are refused, as
// by a service that is not running.
type Proxy struct {
	t      testing.TB
	target string
	port   int

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
	ended bool // the test ended: Open does nothing
	wg    sync.WaitGroup
}

// NewProxy returns a closed proxy to target ("127.0.0.1:5432") on a free
// port. It closes for good when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	p := &Proxy{t: t, target: target, port: testenv.FreePort(t), conns: map[net.Conn]bool{}}
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
	if p.ended || p.ln != nil {
		return
	}
	ln, err := net.Listen("tcp", p.Addr())
	if err != nil {
		p.t.Errorf("e2e: proxy to %s: %v", p.target, err)
		return
	}
	p.ln = ln
	p.wg.Go(func() { p.accept(ln) })
}

// Close stops listening and cuts every connection, as a service that
// dies; Open brings it back on the same port.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		if !p.track(ln, c, s) {
			return
		}
		for _, dir := range [][2]net.Conn{{c, s}, {s, c}} {
			p.wg.Go(func() {
				_, _ = io.Copy(dir[0], dir[1])
				// One side ended: end the other, as a real peer would.
				_ = dir[0].Close()
				_ = dir[1].Close()
				p.mu.Lock()
				delete(p.conns, dir[0])
				delete(p.conns, dir[1])
				p.mu.Unlock()
			})
		}
	}
}

// track records c and s so that Close cuts them; false (and both closed)
// when ln was closed meanwhile.
func (p *Proxy) track(ln net.Listener, c, s net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != ln {
		_ = c.Close()
		_ = s.Close()
		return false
	}
	p.conns[c], p.conns[s] = true, true
	return true
}
