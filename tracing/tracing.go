package tracing

import (
	"context"
	"fmt"
	"net/http"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdkresource "go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/millrace/millrace/config"
)

// Metadata keys of the W3C trace context on bus messages. They are the
// header names, so that a bus that maps metadata to headers (JetStream)
// shows them as any W3C-aware tool expects.
const (
	TraceparentMetadata = "traceparent"
	TracestateMetadata  = "tracestate"
)

// scope names the instrumentation in every span.
const scope = "github.com/millrace/millrace"

// propagator reads and writes traceparent and tracestate.
var propagator = propagation.TraceContext{}

// Tracer makes millrace's spans. A nil *Tracer is tracing off.
type Tracer struct {
	tracer trace.Tracer
}

// New returns a Tracer whose spans go to tp. Tests pass an SDK provider
// with a span recorder.
func New(tp trace.TracerProvider) *Tracer {
	return &Tracer{tracer: tp.Tracer(scope)}
}

// Setup returns the Tracer that cfg asks for, with the provider's
// shutdown (which flushes the spans not yet exported): nil and a no-op
// when tracing is off; with tp when tp is not nil; else an SDK provider
// that batches spans to an OTLP/HTTP collector.
func Setup(ctx context.Context, cfg config.Tracing, tp trace.TracerProvider) (*Tracer, func(context.Context) error, error) {
	if !cfg.Enabled {
		return nil, func(context.Context) error { return nil }, nil
	}
	if tp != nil {
		return New(tp), func(context.Context) error { return nil }, nil
	}
	var opts []otlptracehttp.Option
	if cfg.Endpoint != "" {
		opts = append(opts, otlptracehttp.WithEndpointURL(cfg.Endpoint))
	}
	// The exporter connects lazily: a collector that is down loses spans,
	// never events.
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("tracing.endpoint: %w", err)
	}
	sdk := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))),
		sdktrace.WithResource(sdkresource.NewSchemaless(attribute.String("service.name", cfg.ServiceName))),
	)
	return New(sdk), sdk.Shutdown, nil
}

// Start starts a span named name, a child of the span in ctx.
func (t *Tracer) Start(ctx context.Context, name string, kind trace.SpanKind, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
}

// Extract returns ctx with the remote span context of md, when md holds
// a traceparent and ctx has no span of its own yet.
func Extract(ctx context.Context, md message.Metadata) context.Context {
	if trace.SpanContextFromContext(ctx).IsValid() || md.Get(TraceparentMetadata) == "" {
		return ctx
	}
	return propagator.Extract(ctx, propagation.MapCarrier(md))
}

// Inject writes the span context of ctx into md (nothing when ctx has
// no span).
func Inject(ctx context.Context, md message.Metadata) {
	propagator.Inject(ctx, propagation.MapCarrier(md))
}

// InjectHTTP sets the traceparent and tracestate headers of the span in
// ctx on h. Without a span (tracing off) it only looks into ctx.
func InjectHTTP(ctx context.Context, h http.Header) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	propagator.Inject(ctx, propagation.HeaderCarrier(h))
}

// ExtractHTTP continues the trace of an incoming request's traceparent.
func ExtractHTTP(ctx context.Context, h http.Header) context.Context {
	return propagator.Extract(ctx, propagation.HeaderCarrier(h))
}

// End ends span, recording err as its status.
func End(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// Publisher wraps pub: each message gets a publish span, a child of
// the span of its context (or of the trace context in its metadata),
// and carries that span's context in its metadata across the bus.
func (t *Tracer) Publisher(pub message.Publisher) message.Publisher {
	return &publisher{pub: pub, t: t}
}

type publisher struct {
	pub message.Publisher
	t   *Tracer
}

// Publish gives each message its publish span's context for the bus
// only: once published, the caller's message has its trace metadata
// back as it was. A message published again after a failed attempt (a
// captured change, released again by its lanes) then starts from the
// writer's trace context, not from the failed publish span's.
func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
	spans := make([]trace.Span, len(msgs))
	fields := propagator.Fields()
	type value struct {
		v  string
		ok bool
	}
	before := make([]value, len(msgs)*len(fields))
	for i, m := range msgs {
		for j, f := range fields {
			v, ok := m.Metadata[f]
			before[i*len(fields)+j] = value{v, ok}
		}
		ctx := Extract(m.Context(), m.Metadata)
		ctx, spans[i] = p.t.Start(ctx, "publish "+topic, trace.SpanKindProducer,
			attribute.String("messaging.system", "millrace"),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.destination.name", topic),
			attribute.String("messaging.message.id", m.UUID))
		Inject(ctx, m.Metadata)
	}
	err := p.pub.Publish(topic, msgs...)
	for i, m := range msgs {
		End(spans[i], err)
		for j, f := range fields {
			if b := before[i*len(fields)+j]; b.ok {
				m.Metadata[f] = b.v
			} else {
				delete(m.Metadata, f)
			}
		}
	}
	return err
}

func (p *publisher) Close() error { return p.pub.Close() }
