package noop

import (
	"context"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

// Config is the noop action's section: it has no keys, and a key given
// to it is an error (the section is decoded strictly).
type Config struct{}

// Validate accepts the empty section.
func (Config) Validate() error { return nil }

// Noop is the noop action.
type Noop struct{}

var (
	_ handlers.Action   = Noop{}
	_ handlers.Renderer = Noop{}
)

// Execute returns nil at once; unlike the log action at a filtered
// level, it renders nothing.
func (Noop) Execute(context.Context, *event.Event) error { return nil }

// Render returns an effect of kind noop and nothing else.
func (Noop) Render(context.Context, *event.Event) (handlers.Effect, error) {
	return handlers.Effect{Kind: "noop"}, nil
}

// New builds the action.
func New(context.Context, Config, handlers.Deps) (handlers.Action, error) { return Noop{}, nil }

// Register adds the "noop" type to r.
func Register(r *handlers.Registry) error { return handlers.Register(r, "noop", New) }
