package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// LocalPorts returns the local TCP ports of the sockets process pid
// holds to a server listening on remotePort, read from /proc: a test
// finds the process's connections to that server by them
// (pg_stat_activity.client_port). The remote port matters: Linux reuses
// an ephemeral port for connections to different servers, so another
// process's connection to the server may share a local port with one of
// pid's connections elsewhere.
func LocalPorts(pid, remotePort int) ([]int, error) {
	fds, err := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fd)
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var ports []int
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || !inodes[fields[9]] {
				continue
			}
			local, lok := hexPort(fields[1])
			remote, rok := hexPort(fields[2])
			if lok && rok && remote == remotePort {
				ports = append(ports, local)
			}
		}
		_ = f.Close()
	}
	return ports, nil
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
