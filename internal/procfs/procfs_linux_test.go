//go:build linux

package procfs_test

import (
	"net"
	"os"
	"slices"
	"testing"

	"github.com/millrace/millrace/internal/procfs"
)

// portOf is the port of a TCP address.
func portOf(t *testing.T, a net.Addr) int {
	t.Helper()
	return a.(*net.TCPAddr).Port
}

// The test process listens on two ports and connects to each: the
// listener is found by its port, and the connections to one server are
// told from those to the other.
func TestListenerAndLocalPorts(t *testing.T) {
	var servers []net.Listener
	var conns []net.Conn
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		servers, conns = append(servers, ln), append(conns, c)
	}
	for i, ln := range servers {
		port := portOf(t, ln.Addr())
		pid, err := procfs.ListenerPID(port)
		if err != nil || pid != os.Getpid() {
			t.Errorf("ListenerPID(%d) = %d, %v; want this process, %d", port, pid, err, os.Getpid())
		}
		ports, err := procfs.LocalPorts(os.Getpid(), port)
		if err != nil {
			t.Fatal(err)
		}
		if mine := portOf(t, conns[i].LocalAddr()); !slices.Contains(ports, mine) {
			t.Errorf("LocalPorts(self, %d) = %v; want the connection's port %d among them", port, ports, mine)
		}
		if other := portOf(t, conns[1-i].LocalAddr()); slices.Contains(ports, other) {
			t.Errorf("LocalPorts(self, %d) = %v holds %d, the port of a connection to the other server", port, ports, other)
		}
	}
	if _, err := procfs.ListenerPID(portOf(t, conns[0].LocalAddr())); err == nil {
		t.Errorf("ListenerPID of a port nothing listens on found a process")
	}
}
