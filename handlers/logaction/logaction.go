package logaction

import (
	"context"
	"errors"
	"log/slog"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

// Config is the log action's section.
type Config struct {
	// Level is debug, info (default), warn or error.
	Level string `koanf:"level"`
	// Message is a template over the event. Default
	// "{{.event_type}} {{.entity_type}} {{.entity_id}}".
	Message string `koanf:"message"`
}

// SetDefaults fills the defaults.
func (c *Config) SetDefaults() {
	c.Level = "info"
	c.Message = "{{.event_type}} {{.entity_type}} {{.entity_id}}"
}

// Validate checks the level and compiles the message template.
func (c Config) Validate() error {
	var errs []error
	if _, err := parseLevel(c.Level); err != nil {
		errs = append(errs, config.Errorf("level", "%v", err))
	}
	if _, err := handlers.CompileTemplate("message", c.Message); err != nil {
		errs = append(errs, config.Errorf("message", "%v", err))
	}
	return errors.Join(errs...)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	switch s {
	case "debug", "info", "warn", "error":
		return l, l.UnmarshalText([]byte(s))
	}
	return l, errors.New(`must be one of debug, info, warn, error`)
}

// Log is the log action.
type Log struct {
	logger *slog.Logger
	level  slog.Level
	tmpl   *handlers.Template
}

var (
	_ handlers.Action   = (*Log)(nil)
	_ handlers.Renderer = (*Log)(nil)
)

// New builds the action.
func New(_ context.Context, c Config, deps handlers.Deps) (handlers.Action, error) {
	level, err := parseLevel(c.Level)
	if err != nil {
		return nil, err
	}
	tmpl, err := handlers.CompileTemplate("message", c.Message)
	if err != nil {
		return nil, err
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Log{logger: logger, level: level, tmpl: tmpl}, nil
}

// Register adds the "log" type to r.
func Register(r *handlers.Registry) error { return handlers.Register(r, "log", New) }

// Execute writes the log line.
func (l *Log) Execute(ctx context.Context, ev *event.Event) error {
	msg, err := l.tmpl.Render(ev)
	if err != nil {
		return handlers.Permanent(err)
	}
	l.logger.Log(ctx, l.level, msg, "event_id", ev.ID, "event_type", ev.Type, "entity_type", ev.Entity, "entity_id", ev.EntityID)
	return nil
}

// Render returns the line Execute would log for ev: the level as Method,
// the message as Body.
func (l *Log) Render(_ context.Context, ev *event.Event) (handlers.Effect, error) {
	msg, err := l.tmpl.Render(ev)
	if err != nil {
		return handlers.Effect{}, handlers.Permanent(err)
	}
	return handlers.Effect{Kind: "log", Method: l.level.String(), Body: msg}, nil
}
