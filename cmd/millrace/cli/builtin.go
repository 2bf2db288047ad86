package cli

import (
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/cacheinvalidate"
	"github.com/millrace/millrace/handlers/email"
	"github.com/millrace/millrace/handlers/logaction"
	"github.com/millrace/millrace/handlers/noop"
	"github.com/millrace/millrace/handlers/publish"
	"github.com/millrace/millrace/handlers/slack"
	"github.com/millrace/millrace/handlers/sqlcall"
	"github.com/millrace/millrace/handlers/webhook"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/embedded"
	"github.com/millrace/millrace/topologies/multidb"
	"github.com/millrace/millrace/topologies/nats"
	"github.com/millrace/millrace/topologies/postgres"
	"github.com/millrace/millrace/topologies/redis"
)

// Options are the registries a millrace binary runs with.
type Options struct {
	Actions    *handlers.Registry
	Topologies *topologies.Registry
}

// Defaults returns registries holding every built-in action type and
// topology. This is the one place where built-ins are registered.
func Defaults() Options {
	o := Options{Actions: handlers.NewRegistry(), Topologies: topologies.NewRegistry()}
	for _, register := range []func(*handlers.Registry) error{
		cacheinvalidate.Register,
		email.Register,
		logaction.Register,
		noop.Register,
		publish.Register,
		slack.Register,
		sqlcall.Register,
		webhook.Register,
	} {
		if err := register(o.Actions); err != nil {
			panic(err) // a duplicate built-in is a programming error
		}
	}
	for _, register := range []func(*topologies.Registry) error{
		embedded.Register,
		multidb.Register,
		nats.Register,
		postgres.Register,
		redis.Register,
	} {
		if err := register(o.Topologies); err != nil {
			panic(err)
		}
	}
	return o
}
