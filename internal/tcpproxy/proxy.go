package tcpproxy

import (
	"fmt"
	"io"
	"net"
	"sync"
)

// Proxy forwards the connections it accepts to Target. While it is
// closed nothing listens on its port and connections are refused, as by
// a service that is not running. Safe for concurrent use.
type Proxy struct {
	target string

	mu    sync.Mutex
	addr  string
	ln    net.Listener
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// New returns a closed proxy to target ("host:port").
func New(target string) *Proxy { return &Proxy{target: target, conns: map[net.Conn]bool{}} }

// Listen starts listening on addr ("127.0.0.1:0" for a free port) and
// forwarding; it does nothing while the proxy listens already.
func (p *Proxy) Listen(addr string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("proxy to %s: %w", p.target, err)
	}
	p.ln, p.addr = ln, ln.Addr().String()
	p.wg.Go(func() { p.accept(ln) })
	return nil
}

// Addr is the address the proxy last listened on; "" before Listen.
func (p *Proxy) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr
}

// Close stops listening and cuts every connection, as a service that
// dies; Listen on Addr brings it back on the same port.
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
