// Package lanes releases messages from one ordered source to the router
// so that messages with the same key are handled one after another, in
// arrival order, while messages with different keys run in parallel.
//
// Watermill's subscribers release the next message only after the current
// one is acked, which serialises everything; InstantAck gives parallelism
// but loses ordering and redelivery. Lanes sit between: a bus subscriber
// reads in batches and Pushes each message with its ordering key (source,
// entity type, entity id); the router receives from Out. A key's next
// message is released only after the previous one is acked or nacked.
package lanes
