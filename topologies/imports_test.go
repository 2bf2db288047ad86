package topologies_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/millrace/millrace/"

// listed is what `go list -json` says of a package.
type listed struct {
	ImportPath string
	Deps       []string
}

// goList lists the packages of patterns (relative to the module root)
// with their dependencies, direct and indirect, tests aside.
func goList(t *testing.T, patterns ...string) []listed {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-json"}, patterns...)...)
	cmd.Dir = ".." // the module root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %s: %v\n%s", strings.Join(patterns, " "), err, stderr.String())
	}
	var pkgs []listed
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listed
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) == 0 {
		t.Fatalf("go list %s: no packages", strings.Join(patterns, " "))
	}
	return pkgs
}

// forbidden returns the dependencies of p that are one of pkgs
// (module-relative): "router" is that package, "router/" any below it.
func forbidden(p listed, pkgs ...string) []string {
	var bad []string
	for _, d := range p.Deps {
		rel, ok := strings.CutPrefix(d, module)
		if !ok {
			continue
		}
		for _, pkg := range pkgs {
			if rel == pkg || strings.HasSuffix(pkg, "/") && strings.HasPrefix(rel, pkg) {
				bad = append(bad, rel)
			}
		}
	}
	return bad
}

// TestTopologiesDoNotImportOneAnother: what topologies share lives in
// this package or under bus/, so that a topology is its own package and
// changing one cannot change another.
func TestTopologiesDoNotImportOneAnother(t *testing.T) {
	pkgs := goList(t, "./topologies/...")
	var topologies []string
	for _, p := range pkgs {
		if strings.HasPrefix(p.ImportPath, module+"topologies/") {
			topologies = append(topologies, p.ImportPath)
		}
	}
	if len(topologies) < 5 {
		t.Fatalf("go list found the topology packages %v; want the five built-ins at least", topologies)
	}
	// The root holds what topologies share: it is checked too, and
	// depends on none of them.
	for _, p := range pkgs {
		rel := strings.TrimPrefix(p.ImportPath, module)
		if bad := forbidden(p, "topologies/"); len(bad) > 0 {
			t.Errorf("%s imports the topology packages %v; move what they share to package topologies or bus/", rel, bad)
		}
	}
}

// TestBusImportsNoTopologyRouterOrMiddleware: the buses are components
// the topologies are made of, below the router and the delivery stack.
func TestBusImportsNoTopologyRouterOrMiddleware(t *testing.T) {
	for _, p := range goList(t, "./bus/...") {
		if bad := forbidden(p, "topologies", "topologies/", "router", "router/", "middleware", "middleware/"); len(bad) > 0 {
			t.Errorf("%s imports %v", strings.TrimPrefix(p.ImportPath, module), bad)
		}
	}
}
