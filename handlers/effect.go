package handlers

import (
	"context"

	"github.com/millrace/millrace/event"
)

// Effect is what an action would do for one event, rendered without
// doing it: the request, message or call it would send. `millrace try`
// lists effects and compares those of two configs.
type Effect struct {
	// Kind is the action type: "webhook", "slack", "email"...
	Kind string `json:"kind"`
	// Method is the verb: an HTTP method, "SMTP", "SELECT", "UNLINK",
	// "PUBLISH", a log level.
	Method string `json:"method,omitempty"`
	// Target is where it goes: a URL, a topic, a function, a server.
	// A target read from an *_env variable (a credential) shows only
	// its endpoint.
	Target string `json:"target,omitempty"`
	// Headers are the request's or message's headers, one value each.
	Headers map[string]string `json:"headers,omitempty"`
	// Body is the payload as it would be sent.
	Body string `json:"body,omitempty"`
}

// Renderer is implemented by an action that can show what Execute would
// send for an event without sending it. Render builds the effect with
// the code Execute uses, so the two cannot drift apart, and does no I/O.
// An error is one Execute would return for this event (a template that
// fails on it, say), and is permanent.
type Renderer interface {
	Render(ctx context.Context, ev *event.Event) (Effect, error)
}
