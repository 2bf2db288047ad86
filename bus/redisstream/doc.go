// Package redisstream is millrace's bus over Redis Streams: a Watermill
// Publisher that appends with pipelined XADD (MAXLEN ~), and a Watermill
// Subscriber that reads a stream through a consumer group.
//
// It is written on go-redis rather than taken from watermill-redisstream
// because that one reads one entry per round trip (about 6,000 entries/s
// on a 2-core machine where pipelined XADD/XREADGROUP reach about
// 157,000/s), releases the next entry only after the current one is
// acked, and ends its subscription on an entry it cannot decode. Here:
//
//   - entries are read with XREADGROUP COUNT n BLOCK t and released
//     through bus/lanes: in order per ordering key, in parallel
//     across keys, bounded by MaxInFlight;
//   - acks are batched: one XACK carries every entry the router acked
//     since the previous one;
//   - a nacked message is released again, locally, after the delay the
//     handler put in its metadata (bus.RetryDelayMetadata), before
//     any later message of its key (the lanes' Redeliver, as on the
//     other buses), with its delivery count one higher;
//   - entries held by this process are kept fresh (XCLAIM JUSTID) while
//     they wait or run, and entries idle longer than ClaimIdle on another
//     consumer (a dead worker) are taken over with XAUTOCLAIM;
//   - an entry that does not have the expected fields is released as a
//     message whose payload is its raw fields in JSON, so the router can
//     dead-letter it; it never ends the subscription.
//
// Delivery is at least once. Entries a consumer held when it stopped stay
// pending in the group: the same consumer name reads them back first when
// it subscribes again, and any other consumer claims them after ClaimIdle.
//
// A consumer group shared by several worker processes keeps the order of
// a key only within each process: two workers can run two events of one
// entity at once, and an entry claimed from a dead worker runs after the
// later events of its entity. With Config.Partitions a topic is split by
// ordering key into that many streams, and each worker consumes only the
// partitions it leases (package partition, leases in Redis): one worker
// at a time per partition. A worker that gains a partition first claims
// every entry pending on its stream, whoever held it, and releases those
// in stream order before it reads new entries.
package redisstream
