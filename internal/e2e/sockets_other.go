//go:build !linux

package e2e

import "errors"

// LocalPorts needs /proc; elsewhere it fails.
func LocalPorts(int, int) ([]int, error) { return nil, errors.New("e2e: LocalPorts needs Linux /proc") }
