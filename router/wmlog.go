package router

import (
	"context"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill"
)

// wmLogger is Watermill's logger over slog, with Watermill's Info as
// Debug (its Info lines are about its own start and stop). Unlike
// watermill.SlogLoggerAdapter it asks the handler whether the level is
// enabled before it turns the fields into attributes: Watermill logs two
// Trace lines per message, and building their attributes cost a dozen
// allocations per event with tracing off.
type wmLogger struct{ l *slog.Logger }

var _ watermill.LoggerAdapter = wmLogger{}

func (w wmLogger) log(level slog.Level, msg string, fields watermill.LogFields, extra ...any) {
	ctx := context.Background()
	if !w.l.Enabled(ctx, level) {
		return
	}
	args := make([]any, 0, 2*len(fields)+len(extra))
	for k, v := range fields {
		args = append(args, k, v)
	}
	w.l.Log(ctx, level, msg, append(args, extra...)...)
}

func (w wmLogger) Error(msg string, err error, fields watermill.LogFields) {
	w.log(slog.LevelError, msg, fields, "error", err)
}

func (w wmLogger) Info(msg string, fields watermill.LogFields) { w.log(slog.LevelDebug, msg, fields) }

func (w wmLogger) Debug(msg string, fields watermill.LogFields) { w.log(slog.LevelDebug, msg, fields) }

func (w wmLogger) Trace(msg string, fields watermill.LogFields) {
	w.log(watermill.LevelTrace, msg, fields)
}

func (w wmLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	args := make([]any, 0, 2*len(fields))
	for k, v := range fields {
		args = append(args, k, v)
	}
	return wmLogger{w.l.With(args...)}
}
