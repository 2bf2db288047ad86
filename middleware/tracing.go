package middleware

import (
	"context"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/millrace/millrace/engine"
	"github.com/millrace/millrace/tracing"
)

// traceObserver is the outermost layer of o's stack when tracing is on:
// one span per run of the observer on an event (retries inside it), a
// child of the consume span, with the outcome the layers inside set.
// The message is Run's copy, of this observer alone, so its context can
// be replaced.
func (p *Policy) traceObserver(o *engine.Observer) message.HandlerMiddleware {
	name := "observer " + o.Name
	return func(next message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			d := DeliveryFrom(msg.Context())
			ctx, span := p.Tracer.Start(msg.Context(), name, trace.SpanKindInternal,
				attribute.String("millrace.observer", o.Name), attribute.String("millrace.event_id", d.Event.ID),
				attribute.String("millrace.event_type", string(d.Event.Type)), attribute.String("millrace.entity_type", d.Event.Entity),
				attribute.String("millrace.entity_id", d.Event.EntityID))
			msg.SetContext(ctx)
			out, err := next(msg)
			span.SetAttributes(attribute.String("millrace.outcome", d.Outcome), attribute.Int("millrace.retries", d.Retries),
				attribute.Int("millrace.cache_hits", d.CacheHits))
			tracing.End(span, err)
			return out, err
		}
	}
}

// execActionTraced is execAction inside a span per execution: a retried
// action has one span per attempt. The webhook action sends this span's
// context as its traceparent.
func (p *Policy) execActionTraced(ctx context.Context, d *Delivery, b *engine.Bound, st *ActionState, m *actionMetrics) error {
	ctx, span := p.Tracer.Start(ctx, "action "+b.ID(d.Observer.Name), trace.SpanKindClient,
		attribute.String("millrace.observer", d.Observer.Name), attribute.String("millrace.action.type", b.Spec.Type),
		attribute.Int("millrace.action.index", b.Index), attribute.Int("millrace.action.attempt", st.Attempts+1),
		attribute.String("millrace.endpoint", m.breakerKey))
	err := p.execActionOnce(ctx, d, b, st, m)
	if st.Rejected {
		span.SetAttributes(attribute.Bool("millrace.breaker_open", true))
	}
	tracing.End(span, err)
	return err
}
