// Package jetstream is millrace's bus over NATS JetStream, shared by the
// embedded, nats and multidb topologies: a Watermill Publisher that sets
// Nats-Msg-Id to the message UUID (so the stream drops republished
// changes within its duplicate window) and a Watermill Subscriber over a
// durable pull consumer.
//
// The publisher waits for each message's PubAck through one
// subscription on an inbox of its own (publish.go) rather than nats.go's
// asynchronous publish, which kept a future per message and decoded
// every ack.
//
// The subscriber is written on nats.go rather than taken from
// watermill-nats because that one releases one message per subscription
// at a time and cannot delay a redelivery per message. Here messages are
// fetched in batches and released through lanes: in order per entity,
// in parallel across entities, acked only after the handler succeeded;
// a nacked message is released again after the delay the handler asked
// for, before the later messages of its entity.
//
// The pull requests are its own (pull.go), sent over core NATS by the
// goroutine that reads their messages, rather than nats.go's
// Consumer.Messages, which can stop pulling for seconds: a pull is
// always outstanding while there is room, and one the server ended is
// renewed at once. Metrics.IdlePartitions counts consumers that receive
// nothing while the server has messages for them.
//
// One durable consumer shared by several worker processes keeps that
// order only within each process. With Config.Partitions the topic is
// split by ordering key into partitions, each with a consumer of its
// own that one process at a time reads (package partition).
package jetstream
