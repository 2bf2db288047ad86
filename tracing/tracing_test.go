package tracing_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/tracing"
)

// Off, Setup gives a nil tracer, and no header or metadata is written
// from a context without a span.
func TestOffMakesNothing(t *testing.T) {
	tr, shutdown, err := tracing.Setup(context.Background(), config.Tracing{Enabled: false}, nil)
	if err != nil || tr != nil {
		t.Fatalf("tracing off: tracer %v, err %v; want nil, nil", tr, err)
	}
	if err := shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	tracing.InjectHTTP(context.Background(), h)
	md := message.Metadata{}
	tracing.Inject(context.Background(), md)
	if len(h) != 0 || len(md) != 0 {
		t.Fatalf("no span, yet header %v and metadata %v were written", h, md)
	}
}

// A span's context written into message metadata comes back out of it
// on the other side, and a publish through the wrapped publisher is a
// child of the message's span.
func TestContextCrossesMetadata(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	tr := tracing.New(tp)
	ctx, span := tr.Start(context.Background(), "root", trace.SpanKindInternal)
	span.End()

	// Watermill's in-process Pub/Sub: the consumer gets a copy of the
	// message, metadata and all, without its context.
	ps, ch := subscribed(t, 1)
	msg := message.NewMessage("id-1", nil)
	msg.SetContext(ctx)
	if err := tr.Publisher(ps).Publish("events", msg); err != nil {
		t.Fatal(err)
	}
	in := <-ch
	in.Ack()
	if in.Metadata.Get(tracing.TraceparentMetadata) == "" {
		t.Fatalf("consumed message carries no traceparent: %v", in.Metadata)
	}
	got := trace.SpanContextFromContext(tracing.Extract(in.Context(), in.Metadata))
	if got.TraceID() != span.SpanContext().TraceID() || !got.IsRemote() {
		t.Fatalf("extracted %v; want a remote span of trace %s", got, span.SpanContext().TraceID())
	}
	ended := rec.Ended()
	if len(ended) != 2 || ended[1].Name() != "publish events" || ended[1].Parent().SpanID() != span.SpanContext().SpanID() {
		t.Fatalf("want the publish span as the root's child, got %v", ended)
	}
	if got.SpanID() != ended[1].SpanContext().SpanID() {
		t.Fatalf("metadata names span %s; want the publish span %s", got.SpanID(), ended[1].SpanContext().SpanID())
	}
}

// TestPublishLeavesTheMessageAsItWas: the publish span's context goes
// over the bus, while the caller's message keeps its own trace metadata
// (a writer's traceparent, or none), so that a message published again
// after a failed attempt starts from the same parent.
func TestPublishLeavesTheMessageAsItWas(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tr := tracing.New(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	ctx, writer := tr.Start(context.Background(), "writer", trace.SpanKindProducer)
	writer.End()

	ps, ch := subscribed(t, 2)
	withParent := message.NewMessage("id-1", nil)
	tracing.Inject(ctx, withParent.Metadata)
	want := withParent.Metadata.Get(tracing.TraceparentMetadata)
	without := message.NewMessage("id-2", nil)
	if err := tr.Publisher(ps).Publish("events", withParent, without); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		in := <-ch
		in.Ack()
		got := in.Metadata.Get(tracing.TraceparentMetadata)
		if got == "" || got == want {
			t.Errorf("message %s went over the bus with traceparent %q; want its publish span's", in.UUID, got)
		}
	}
	if got := withParent.Metadata.Get(tracing.TraceparentMetadata); got != want {
		t.Errorf("after the publish the message's traceparent is %q; want the writer's %q", got, want)
	}
	if _, ok := without.Metadata[tracing.TraceparentMetadata]; ok {
		t.Errorf("after the publish a message that had no traceparent has one: %v", without.Metadata)
	}
}

// subscribed returns Watermill's in-process Pub/Sub with a subscription
// to "events" that buffers n messages.
func subscribed(t *testing.T, n int64) (*gochannel.GoChannel, <-chan *message.Message) {
	t.Helper()
	ps := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: n}, watermill.NopLogger{})
	t.Cleanup(func() { _ = ps.Close() })
	ch, err := ps.Subscribe(context.Background(), "events")
	if err != nil {
		t.Fatal(err)
	}
	return ps, ch
}
