// Package embedded is the default topology: a NATS JetStream server runs
// inside the millrace process, listening on loopback only, with its store
// under a configured directory. Nothing outside the process is needed.
//
// Topology is the registry entry: Validate checks the [embedded] section,
// and Features declares topics (subjects) and durable dead letters (a
// stream of their own in the same directory); one process has no
// partitions and no Redis.
package embedded
