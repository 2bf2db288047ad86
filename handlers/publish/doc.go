// Package publish is the "publish" action: it puts the event, or a body
// rendered from a template, on another topic of the bus, for fan-out and
// for chaining observers. The topic must exist on the topology's bus: a
// topology without topics beside router.topic (the postgres topology's
// change log) refuses other topics at validate time (Config.CheckConfig).
//
// The outgoing message id is derived from the event id and the action's
// config hash, so every retry of one event's publish carries the same id
// and a bus that deduplicates by id (JetStream's Nats-Msg-Id) keeps one
// copy.
package publish
