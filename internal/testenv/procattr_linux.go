package testenv

import (
	"os/exec"
	"syscall"
)

// killWithParent makes the kernel kill the child when the test binary dies
// (a panic or a -timeout), so no server outlives its test. Linux sends the
// signal when the thread that started the child exits; Go only ends threads
// held by runtime.LockOSThread, which tests using this package do not do.
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
