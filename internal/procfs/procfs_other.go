//go:build !linux

package procfs

import "errors"

var errNoProc = errors.New("procfs: needs Linux /proc")

// LocalPorts needs /proc; elsewhere it fails.
func LocalPorts(int, int) ([]int, error) { return nil, errNoProc }

// ListenerPID needs /proc; elsewhere it fails.
func ListenerPID(int) (int, error) { return 0, errNoProc }
