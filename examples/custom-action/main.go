// Command custom-action is millrace with one action type of its own,
// "shout", which logs a templated message in capitals. It is the whole
// recipe for a custom binary: the built-in registries, one Register
// call, and the millrace command line. See README.md.
package main

import (
	"os"

	"github.com/millrace/millrace/cmd/millrace/cli"
	"github.com/millrace/millrace/handlers"
)

func main() {
	opts := cli.Defaults()
	handlers.MustRegister(opts.Actions, "shout", New)
	os.Exit(cli.Main(opts, os.Args[1:]))
}
