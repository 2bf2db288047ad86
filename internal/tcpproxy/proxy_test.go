package tcpproxy_test

import (
	"bufio"
	"net"
	"testing"

	"github.com/millrace/millrace/internal/tcpproxy"
)

// A proxy forwards to its target; closed, it refuses connections and
// cuts the open ones; listening again on Addr forwards once more.
func TestProxyForwardsClosesAndComesBack(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					_, _ = c.Write([]byte(line))
				}
			}()
		}
	}()
	p := tcpproxy.New(echo.Addr().String())
	defer p.Close()
	if err := p.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	roundTrip := func() (net.Conn, error) {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			return nil, err
		}
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return c, err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil && line != "ping\n" {
			t.Fatalf("echo through the proxy = %q", line)
		}
		return c, err
	}
	open, err := roundTrip()
	if err != nil {
		t.Fatalf("through the open proxy: %v", err)
	}
	defer open.Close()

	p.Close()
	if c, err := net.Dial("tcp", p.Addr()); err == nil {
		c.Close()
		t.Fatal("the closed proxy accepted a connection")
	}
	if _, err := bufio.NewReader(open).ReadString('\n'); err == nil {
		t.Fatal("a connection opened before Close still reads")
	}

	if err := p.Listen(p.Addr()); err != nil {
		t.Fatalf("listen again on %s: %v", p.Addr(), err)
	}
	c, err := roundTrip()
	if err != nil {
		t.Fatalf("through the proxy after it came back: %v", err)
	}
	c.Close()
}
