package verify

import (
	"fmt"
	"io"
	"net"
	"sync"
)

// proxy forwards TCP connections from a loopback port of its own to a
// service. Cut stops listening and breaks every connection, so that the
// service appears gone (connections refused); Heal brings it back on the
// same port.
type proxy struct {
	target, addr string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// newProxy returns an open proxy to target ("host:port").
func newProxy(target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy to %s: %w", target, err)
	}
	p := &proxy{target: target, addr: ln.Addr().String(), conns: map[net.Conn]bool{}}
	p.serve(ln)
	return p, nil
}

// Heal listens again on the proxy's port.
func (p *proxy) Heal() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("proxy to %s: %w", p.target, err)
	}
	p.serveLocked(ln)
	return nil
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.serveLocked(ln)
}

func (p *proxy) serveLocked(ln net.Listener) {
	p.ln = ln
	p.wg.Go(func() { p.accept(ln) })
}

// Cut stops listening and breaks every connection.
func (p *proxy) Cut() {
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

func (p *proxy) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return // cut
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		if p.ln != ln {
			p.mu.Unlock()
			_ = c.Close()
			_ = s.Close()
			return
		}
		p.conns[c], p.conns[s] = true, true
		p.mu.Unlock()
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
