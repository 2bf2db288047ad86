package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgBinGlob is where Debian's PostgreSQL packages put the server's
// programs, one directory per major version (test/services.sh installs
// them).
const pgBinGlob = "/usr/lib/postgresql/*/bin/initdb"

// StartPostgres initdbs a throw-away PostgreSQL cluster in a temporary
// directory and starts it on a free 127.0.0.1 port with trust auth and
// the given settings (e.g. "wal_level=replica"), for tests that need a
// server configured unlike the shared one. It returns the URL of its
// "postgres" database as user postgres. The server is stopped and its
// directory removed when the test ends. Run as root, the cluster belongs
// to the postgres OS user (PostgreSQL refuses to run as root). The test
// fails when the server programs are not installed or do not start.
func StartPostgres(t testing.TB, settings ...string) string {
	t.Helper()
	bin := pgBinDir(t)
	dir, err := os.MkdirTemp("", "millrace-pg-")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	var runAs []string
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("testenv: running as root, a throw-away PostgreSQL needs the postgres OS user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		runAs = []string{"runuser", "-u", "postgres", "--"}
	}
	run := func(name string, args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		argv := append(append(slices.Clone(runAs), filepath.Join(bin, name)), args...)
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Dir = dir
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			log, _ := os.ReadFile(filepath.Join(dir, "log"))
			t.Fatalf("testenv: %s: %v\n%s\nserver log:\n%s", strings.Join(argv, " "), err, out.String(), log)
		}
	}
	data := filepath.Join(dir, "data")
	run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
	port := FreePort(t)
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", port, dir)
	for _, s := range settings {
		opts += " -c " + s
	}
	run("pg_ctl", "-D", data, "-o", opts, "-l", filepath.Join(dir, "log"), "-w", "-t", "60", "start")
	t.Cleanup(func() { run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop") })
	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("testenv: the throw-away PostgreSQL on port %d: %v", port, err)
	}
	_ = conn.Close(ctx)
	return url
}

// pgBinDir returns the directory of the newest installed PostgreSQL
// server's programs.
func pgBinDir(t testing.TB) string {
	t.Helper()
	found, _ := filepath.Glob(pgBinGlob)
	if len(found) == 0 {
		t.Fatalf("testenv: no PostgreSQL server programs (%s);"+
			" `make test` runs test/services.sh, which installs them", pgBinGlob)
	}
	slices.SortFunc(found, func(a, b string) int { return majorOf(a) - majorOf(b) })
	return filepath.Dir(found[len(found)-1])
}

// majorOf is the major version in a path under /usr/lib/postgresql.
func majorOf(path string) int {
	rest, _ := strings.CutPrefix(path, "/usr/lib/postgresql/")
	v, _, _ := strings.Cut(rest, "/")
	n, _ := strconv.Atoi(v)
	return n
}
