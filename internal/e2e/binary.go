package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RaceEnv, set to 1, builds the millrace binary with the race detector.
const RaceEnv = "MILLRACE_E2E_RACE"

var build struct {
	once sync.Once
	dir  string
	path string
	err  error
	took time.Duration
}

// Main runs the tests of a package that uses [Binary] and removes the
// binary afterwards. Call it from TestMain:
//
//	func TestMain(m *testing.M) { e2e.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// ModuleRoot returns the directory of the millrace module.
func ModuleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Binary returns the path of a millrace binary built from this tree, once
// per test binary. The build is serialised across test binaries that run
// at the same time (a file lock), so the first compiles and the others
// find the packages in the build cache.
func Binary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		start := time.Now()
		build.dir, build.err = os.MkdirTemp("", "millrace-e2e-")
		if build.err != nil {
			return
		}
		build.path = filepath.Join(build.dir, "millrace")
		build.err = goBuild(build.path, "./cmd/millrace", os.Getenv(RaceEnv) == "1")
		build.took = time.Since(start)
	})
	if build.err != nil {
		t.Fatalf("e2e: build millrace: %v", build.err)
	}
	return build.path
}

// natsServer is the nats-server built by NATSServerBinary.
var natsServer struct {
	once sync.Once
	path string
	err  error
}

// NATSServerBinary returns the path of a nats-server built from the
// module version millrace embeds (go.mod), once per test binary: the
// cluster tests run the server users are told to deploy, not whichever
// the distribution packages. It lives beside the millrace binary and is
// removed with it by [Main].
func NATSServerBinary(t testing.TB) string {
	t.Helper()
	Binary(t) // for build.dir
	natsServer.once.Do(func() {
		natsServer.path = filepath.Join(build.dir, "nats-server")
		natsServer.err = goBuild(natsServer.path, "github.com/nats-io/nats-server/v2", false)
	})
	if natsServer.err != nil {
		t.Fatalf("e2e: build nats-server: %v", natsServer.err)
	}
	return natsServer.path
}

// goBuild builds pkg into out, one build at a time across test binaries.
func goBuild(out, pkg string, race bool) error {
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "millrace-e2e-build.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer func() { _ = lock.Close() }()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	defer func() { _ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) }()
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	args = append(args, pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = ModuleRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %v: %w\n%s", args, err, b)
	}
	return nil
}
