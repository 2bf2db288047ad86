//go:build !linux

package e2e

import "os/exec"

// killWithParent does nothing where the kernel cannot tie a child's life
// to its parent; the test's cleanup still kills the process.
func killWithParent(*exec.Cmd) {}
