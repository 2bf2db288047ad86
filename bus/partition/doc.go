// Package partition spreads the partitions of a bus over the worker
// processes that share it, so that each partition has one consumer at a
// time.
//
// A bus keeps events of one entity in order only while one process
// handles them: two workers pulling from one shared consumer (a JetStream
// durable, a Redis consumer group) can run two events of an entity at
// once, or a redelivered one after a later one. Partitioning fixes that:
// the publisher puts each event in the partition of its ordering key
// (Of), and Run makes every live worker lease a fair share of the
// partitions and consume only those. A worker that dies stops renewing
// its leases; after their TTL the others take its partitions over.
//
// FanIn is Run for a subscription: it feeds one channel from every
// partition held, within in-flight, buffered and read-ahead bounds that
// the partitions share, and a partition given up stops feeding it before
// its lease is released.
//
// Leases live in the bus's own store (a JetStream key-value bucket, or
// Redis keys), behind the Leases interface.
package partition
