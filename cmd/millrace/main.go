// Command millrace turns database changes into actions. See the README.
//
// A custom binary with its own action types is this file plus one
// handlers.Register call on opts.Actions before cli.Main.
package main

import (
	"os"

	"github.com/millrace/millrace/cmd/millrace/cli"
)

func main() {
	os.Exit(cli.Main(cli.Defaults(), os.Args[1:]))
}
