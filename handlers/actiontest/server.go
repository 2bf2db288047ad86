package actiontest

import (
	"net"
	"sync"
	"testing"
)

// Server is a TCP server on 127.0.0.1 that accepts connections, reads
// what it is sent and never answers: a stand-in for a peer that hangs.
type Server struct {
	// Addr is the server's host:port.
	Addr string
	// URL is "http://" + Addr: an HTTP request to it never gets a
	// response.
	URL string
}

// SilentServer starts a Server that stops, dropping its connections,
// when the test ends.
func SilentServer(t testing.TB) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("actiontest: listen: %v", err)
	}
	var (
		mu     sync.Mutex
		conns  []net.Conn
		closed bool
		wg     sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed at cleanup
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				_ = c.Close()
				return
			}
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		closed = true
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	addr := ln.Addr().String()
	return &Server{Addr: addr, URL: "http://" + addr}
}
