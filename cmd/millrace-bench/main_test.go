package main

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/millrace/millrace/cmd/millrace/cli"
)

// TestFlags checks that the command takes the flags `make bench` passes
// in BENCH_FLAGS and docs/performance.md lists.
func TestFlags(t *testing.T) {
	cmd := benchCmd(&bytes.Buffer{}, &bytes.Buffer{})
	for _, name := range []string{"topologies", "events", "payload", "out", "quick", "rate", "budget", "partitions", "embedded-sync", "cpuprofile", "log-level", "scenarios"} {
		if cmd.Flags().Lookup(name) == nil {
			t.Errorf("no --%s flag", name)
		}
	}
	if f := cmd.Flags().ShorthandLookup("n"); f == nil || f.Name != "events" {
		t.Errorf("-n is %v; want --events", f)
	}
	if got := cmd.Flags().Lookup("out").DefValue; got != "bench" {
		t.Errorf("--out defaults to %q; want bench (bench/results.json, RESULTS.md, chart.png)", got)
	}
}

// TestBadOptions checks that options the suite rejects exit 2, naming
// the problem, before any service is reached. (A zero -n or --rate is
// the default, not an error.) The context is cancelled, so that an
// option the suite accepted would fail fast instead of running it.
func TestBadOptions(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--topologies", "embedded,bogus"}, `unknown topology "bogus"`},
		{[]string{"--scenarios", "noop,bogus"}, `unknown scenario "bogus"`},
		{[]string{"-n", "-1"}, "events must be at least 1"},
		{[]string{"--rate", "-1"}, "rate must be at least 1"},
		{[]string{"--budget", "-1m"}, "budget must not be negative"},
		{[]string{"--embedded-sync", "bogus"}, `embedded sync: "bogus" is not "always" or a duration such as "2m"`},
		{[]string{"--no-such-flag"}, "unknown flag"},
		{[]string{"extra"}, "unknown command"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(ctx, append(c.args, "--out", t.TempDir()), &stdout, &stderr)
		if code != cli.ExitInvalid || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args, code, stderr.String(), cli.ExitInvalid, c.want)
		}
	}
}

// TestProductDoesNotLinkTheSuite checks that the millrace binary links
// neither the harness nor the chart drawing: they are this command's.
func TestProductDoesNotLinkTheSuite(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/millrace/millrace/cmd/millrace").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "github.com/millrace/millrace/internal/bench" || strings.HasPrefix(pkg, "golang.org/x/image") {
			t.Errorf("cmd/millrace depends on %s", pkg)
		}
	}
}
