// Command custom-bus is millrace with one topology of its own, "sql"
// (package sqlbus): the embedded topology whose bus is watermill-sql on
// PostgreSQL instead of JetStream. Any Watermill Publisher and
// Subscriber pair becomes the bus the same way, through
// topologies.WithBus. See README.md.
package main

import (
	"os"

	"github.com/millrace/millrace/cmd/millrace/cli"
	"github.com/millrace/millrace/examples/custom-bus/sqlbus"
)

func main() { os.Exit(cli.Main(options(), os.Args[1:])) }

// options are the built-in registries plus the sql topology.
func options() cli.Options {
	opts := cli.Defaults()
	opts.Topologies.MustRegister(sqlbus.Topology())
	return opts
}
