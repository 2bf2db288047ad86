package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

// Config is the shout action's section:
//
//	[[observers.new_orders.actions]]
//	type = "shout"
//	message = "order {{.entity_id}} created"
type Config struct {
	// Message is a template over the event. Default
	// "{{.event_type}} {{.entity_type}} {{.entity_id}}".
	Message string `koanf:"message"`
}

// SetDefaults fills the defaults; the registry calls it before decoding.
func (c *Config) SetDefaults() {
	c.Message = "{{.event_type}} {{.entity_type}} {{.entity_id}}"
}

// Validate checks the section without I/O; `millrace validate` reports
// its errors with their key path.
func (c Config) Validate() error {
	if strings.TrimSpace(c.Message) == "" {
		return config.Errorf("message", "must not be empty")
	}
	if _, err := handlers.CompileTemplate("message", c.Message); err != nil {
		return config.Errorf("message", "%v", err)
	}
	return nil
}

// Shout logs "SHOUT <MESSAGE>!" for every event.
type Shout struct {
	tmpl   *handlers.Template
	logger *slog.Logger
}

var _ handlers.Action = (*Shout)(nil)

// New builds the action; it is the BuildFunc given to handlers.Register.
func New(_ context.Context, c Config, deps handlers.Deps) (handlers.Action, error) {
	tmpl, err := handlers.CompileTemplate("message", c.Message)
	if err != nil {
		return nil, err
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Shout{tmpl: tmpl, logger: logger}, nil
}

// Execute renders the message and logs it. A message that cannot be
// rendered for this event will not render on a retry either, so the
// error is permanent.
func (s *Shout) Execute(ctx context.Context, ev *event.Event) error {
	msg, err := s.tmpl.Render(ev)
	if err != nil {
		return handlers.Permanent(fmt.Errorf("shout: message: %w", err))
	}
	s.logger.InfoContext(ctx, "SHOUT "+strings.ToUpper(msg)+"!", "event_id", ev.ID)
	return nil
}
