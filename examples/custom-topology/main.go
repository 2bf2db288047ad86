// Command custom-topology is millrace with one topology of its own,
// "memory" (package memory): a bus on Watermill's GoChannel and dead
// letters in memory. It is the whole recipe for a custom topology: a
// package with a Build, a Validate and a feature set, and one line that
// registers it. See README.md.
package main

import (
	"os"

	"github.com/millrace/millrace/cmd/millrace/cli"
	"github.com/millrace/millrace/examples/custom-topology/memory"
)

func main() { os.Exit(cli.Main(options(), os.Args[1:])) }

// options are the built-in registries plus the memory topology.
func options() cli.Options {
	opts := cli.Defaults()
	opts.Topologies.MustRegister(memory.Topology())
	return opts
}
