package main

import (
	"testing"

	"github.com/millrace/millrace/cmd/millrace/cli"
)

// TestExampleConfigIsValid: `custom-bus validate millrace.toml` accepts
// the example, which picks the sql topology; millrace's own binary,
// without the registration line, refuses it naming the key.
func TestExampleConfigIsValid(t *testing.T) {
	if code := cli.Main(options(), []string{"validate", "millrace.toml"}); code != cli.ExitOK {
		t.Errorf("validate millrace.toml: exit %d; want %d", code, cli.ExitOK)
	}
	if code := cli.Main(cli.Defaults(), []string{"validate", "millrace.toml"}); code != cli.ExitInvalid {
		t.Errorf("validate millrace.toml without the sql topology: exit %d; want %d", code, cli.ExitInvalid)
	}
}
