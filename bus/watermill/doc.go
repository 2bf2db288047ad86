// Package watermill builds the bus of a topology from the upstream
// Watermill Pub/Subs instead of millrace's own (bus.driver =
// "watermill"): watermill-nats/v2 on a JetStream stream and
// watermill-redisstream on a Redis stream, configured from the same
// settings as bus/jetstream and bus/redisstream and writing the same
// wire format (their WireFormat), so that producers and the stream's
// contents do not depend on the driver.
//
// What the upstream subscribers do not do, and millrace's do, is the
// point of the choice (docs/drivers.md): they hand out one message at a
// time per subscription, with no per-entity lanes, so events of one
// entity stay in order only with one subscription (router.max_in_flight
// = 1); a nacked message comes back after a fixed NackDelay, not after
// the delay the router asked for (bus.RetryDelayMetadata); there are no
// partitions; a handler that outlasts the ack wait gets a second copy.
package watermill
