// Package bustest is the conformance suite every millrace bus runs: what
// the router relies on from a bus, beyond Watermill's own Pub/Sub tests
// (github.com/ThreeDotsLabs/watermill/pubsub/tests), checked the same way
// for each.
//
// A bus's test calls [Run] with a [Factory] that opens its publisher and
// subscribers on a stream of the test's own (internal/testenv gives each test
// a stream or key prefix). The subtests:
//
//   - OrderPerKey: many keys × many messages, published at once, are
//     released one at a time and in publish order per ordering key
//     (bus.KeyMetadata), also when some are nacked, while different keys
//     run in parallel; metadata survives the trip.
//   - NackWithDelay: a message nacked with bus.RetryDelayMetadata comes
//     back no sooner than that delay, and before the next message of its
//     key.
//   - PartitionsAcrossWorkers: two worker processes on a partitioned
//     stream share the keys, never run one key's messages at once nor out
//     of order, and when one worker stops the other takes its partitions
//     over and every message is handled.
//
// Timeouts are generous (tens of seconds) for slow shared machines; every
// assertion fails when the bus breaks its promise.
package bustest
