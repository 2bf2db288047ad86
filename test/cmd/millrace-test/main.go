// Command millrace-test is millrace with the postgres, redis, nats and
// multidb topologies registered on top of the built-in ones, for the
// process tests in test/. A topology already built in is left as it is.
package main

import (
	"os"
	"slices"

	"github.com/millrace/millrace/cmd/millrace/cli"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/multidb"
	"github.com/millrace/millrace/topologies/nats"
	"github.com/millrace/millrace/topologies/postgres"
	"github.com/millrace/millrace/topologies/redis"
)

func main() {
	o := cli.Defaults()
	for name, register := range map[string]func(*topologies.Registry) error{
		"postgres": postgres.Register,
		"redis":    redis.Register,
		"nats":     nats.Register,
		"multidb":  multidb.Register,
	} {
		if slices.Contains(o.Topologies.Names(), name) {
			continue
		}
		if err := register(o.Topologies); err != nil {
			panic(err)
		}
	}
	os.Exit(cli.Main(o, os.Args[1:]))
}
