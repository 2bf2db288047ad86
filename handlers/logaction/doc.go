// Package logaction is the "log" action: it writes one log line per event
// through log/slog, at a configured level, with a templated message.
package logaction
