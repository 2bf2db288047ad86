//go:build linux

package procfs

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// LocalPorts returns the local TCP ports of the sockets process pid
// holds to a server listening on remotePort, from /proc: the server
// finds this process's connections by them
// (pg_stat_activity.client_port). The remote port matters: Linux reuses
// an ephemeral port for connections to different servers, so another
// process's connection to this server may share a local port with one
// of pid's connections elsewhere.
func LocalPorts(pid, remotePort int) ([]int, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	inodes, err := socketInodes(dir)
	if err != nil {
		return nil, err
	}
	var ports []int
	for _, e := range tcpTable(dir) {
		if inodes[e.inode] && e.remotePort == remotePort {
			ports = append(ports, e.localPort)
		}
	}
	return ports, nil
}

// ListenerPID returns the process on this machine that listens on TCP
// port: a service's server, whose CPU time a benchmark reads. It scans
// every process's sockets, so it is for once in a while, not per event;
// a process whose sockets it may not read (another user's, without
// root) is not found.
func ListenerPID(port int) (int, error) {
	var inode string
	for _, e := range tcpTable("/proc/self") {
		if e.listening && e.localPort == port {
			inode = e.inode
			break
		}
	}
	if inode == "" {
		return 0, fmt.Errorf("procfs: nothing listens on port %d here", port)
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		if inodes, _ := socketInodes("/proc/" + p.Name()); inodes[inode] {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("procfs: no process found with the socket listening on port %d (their /proc/<pid>/fd may not be readable)", port)
}

// socketInodes returns the inodes of the sockets of the process whose
// /proc directory is dir.
func socketInodes(dir string) (map[string]bool, error) {
	fds, err := os.ReadDir(dir + "/fd")
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(dir + "/fd/" + fd.Name())
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	return inodes, nil
}

// tcpEntry is one socket of /proc/<pid>/net/tcp or tcp6.
type tcpEntry struct {
	localPort, remotePort int
	listening             bool
	inode                 string
}

// tcpTable reads the TCP sockets of the network namespace of the
// process whose /proc directory is dir.
func tcpTable(dir string) []tcpEntry {
	var entries []tcpEntry
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(dir + "/net/" + table)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			f := strings.Fields(sc.Text())
			if len(f) < 10 {
				continue
			}
			local, lok := hexPort(f[1])
			remote, rok := hexPort(f[2])
			if lok && rok {
				entries = append(entries, tcpEntry{localPort: local, remotePort: remote, listening: f[3] == "0A", inode: f[9]})
			}
		}
	}
	return entries
}

// hexPort reads the port of a /proc/net/tcp address ("0100007F:1538").
func hexPort(addr string) (int, bool) {
	_, hex, ok := strings.Cut(addr, ":")
	if !ok {
		return 0, false
	}
	port, err := strconv.ParseInt(hex, 16, 32)
	return int(port), err == nil
}
