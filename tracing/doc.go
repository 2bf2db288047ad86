// Package tracing follows one event from its capture to the requests
// its actions send, with OpenTelemetry spans: capture, bus publish, bus
// consume, each observer and each action. The W3C trace context travels
// in the Watermill message metadata (TraceparentMetadata,
// TracestateMetadata), which every bus carries, and in the traceparent
// header of webhooks and of POST /v1/events.
//
// Tracing is off by default, and then a *Tracer is nil: callers check
// for nil and take a path without spans, so that the hot path makes no
// span and no context when nobody looks (the SDK's no-op provider would
// still cost a context per layer).
package tracing
