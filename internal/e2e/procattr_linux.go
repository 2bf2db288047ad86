package e2e

import (
	"os/exec"
	"syscall"
)

// killWithParent makes the kernel kill the child when the test binary
// dies (a panic or a -timeout), so no millrace outlives its test.
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
