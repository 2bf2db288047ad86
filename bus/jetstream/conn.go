package jetstream

import (
	"context"
	"errors"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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

// jsClusterNotAvailable is JetStream's "JetStream system temporarily
// unavailable", answered while a cluster has no meta leader.
const jsClusterNotAvailable jetstream.ErrorCode = 10008

// Unavailable reports whether err says that JetStream did not answer
// (yet) rather than that it refused: a request that timed out or found
// no responder, or a cluster electing a leader. These pass once the
// servers are back or a leader is elected, so a caller waits and asks
// again instead of giving up.
func Unavailable(err error) bool {
	var api *jetstream.APIError
	switch {
	case err == nil:
		return false
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, nats.ErrDisconnected):
		return true
	case errors.As(err, &api):
		return api.ErrorCode == jsClusterNotAvailable
	}
	return false
}
