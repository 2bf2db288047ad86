package jetstream

import (
	"errors"
	"log/slog"

	"github.com/nats-io/nats.go"
)

// ConnHandlers are the options that make a NATS connection of the bus
// report what happens to it outside any call: its asynchronous errors
// are logged on logger at error level and counted in m.AsyncErrors
// (without them nats.go writes a bare line to stderr, outside the log,
// and nothing counts them), its disconnections at warn level and its
// reconnections at info level.
//
// A slow consumer is a subscription whose handler fell behind its
// pending limits, so nats.go drops what arrives for it: on the bus,
// messages of a pull consumer that JetStream redelivers after ack_wait,
// which delays them.
func ConnHandlers(logger *slog.Logger, m *Metrics) []nats.Option {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return []nats.Option{
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			kind := AsyncErrorOther
			if errors.Is(err, nats.ErrSlowConsumer) {
				kind = AsyncErrorSlowConsumer
			}
			m.AsyncErrors.WithLabelValues(kind).Inc()
			attrs := []any{"kind", kind, "err", err}
			if sub != nil {
				attrs = append(attrs, "subject", sub.Subject)
				if dropped, derr := sub.Dropped(); derr == nil && dropped > 0 {
					attrs = append(attrs, "dropped", dropped)
				}
			}
			logger.Error("nats: asynchronous error", attrs...)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			// Close reports a nil error: not a loss.
			if err != nil {
				logger.Warn("nats: disconnected; reconnecting", "err", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { logger.Info("nats: reconnected") }),
	}
}
