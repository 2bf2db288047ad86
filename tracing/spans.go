package tracing

import (
	"fmt"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/event"
)

// Capture is the middleware of source's capture handler (change log or
// WAL → bus): a capture span per change, the root of the event's trace
// unless the change's metadata already carries a traceparent (a writer
// that put one into the change log's metadata column continues its own
// trace). The span holds the change's position in its source: the
// change-log position, or for WAL capture (wal true) the commit LSN.
// The publish span of the handler's output is its child.
func (t *Tracer) Capture(source string, wal bool) message.HandlerMiddleware {
	return func(next message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			attrs := []attribute.KeyValue{
				attribute.String("millrace.source", source),
				attribute.String("messaging.message.id", msg.UUID),
			}
			// Decoded here only when tracing is on; a payload that does
			// not decode is dead-lettered downstream, its span says so.
			if ev, err := event.Decode(msg.Payload); err == nil {
				attrs = append(attrs, attribute.String("millrace.event_type", string(ev.Type)),
					attribute.String("millrace.entity_type", ev.Entity), attribute.String("millrace.entity_id", ev.EntityID))
				if wal {
					attrs = append(attrs, attribute.String("db.postgresql.commit_lsn", FormatLSN(uint64(ev.Seq))))
				} else {
					attrs = append(attrs, attribute.Int64("millrace.change_log.position", ev.Seq))
				}
			} else {
				attrs = append(attrs, attribute.String("millrace.decode_error", err.Error()))
			}
			if xid := msg.Metadata.Get(bus.XIDMetadata); xid != "" {
				attrs = append(attrs, attribute.String("db.postgresql.xid", xid))
			}
			ctx := Extract(msg.Context(), msg.Metadata)
			ctx, span := t.Start(ctx, "capture "+source, trace.SpanKindInternal, attrs...)
			msg.SetContext(ctx)
			out, err := next(msg)
			End(span, err)
			return out, err
		}
	}
}

// FormatLSN writes a WAL position as PostgreSQL does ("16/B374D848").
func FormatLSN(lsn uint64) string {
	return fmt.Sprintf("%X/%X", uint32(lsn>>32), uint32(lsn))
}

// Consume starts the consume span of a message taken from the bus, a
// child of the publish span whose context the message's metadata
// carries (a new trace when it carries none), and sets it as the
// message's context, which the observers' spans continue.
func (t *Tracer) Consume(msg *message.Message, topic string) trace.Span {
	ctx := Extract(msg.Context(), msg.Metadata)
	attrs := []attribute.KeyValue{
		attribute.String("messaging.system", "millrace"),
		attribute.String("messaging.operation.type", "process"),
		attribute.String("messaging.destination.name", topic),
		attribute.String("messaging.message.id", msg.UUID),
	}
	if n := msg.Metadata.Get(bus.DeliveryMetadata); n != "" {
		if d, err := strconv.Atoi(n); err == nil {
			attrs = append(attrs, attribute.Int("messaging.message.delivery_count", d))
		}
	}
	ctx, span := t.Start(ctx, "consume "+topic, trace.SpanKindConsumer, attrs...)
	msg.SetContext(ctx)
	return span
}
