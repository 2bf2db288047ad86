// Package embedded is the default topology: a NATS JetStream server runs
// inside the millrace process, listening on loopback only, with its store
// under a configured directory. Nothing outside the process is needed.
// By default (embedded.sync = "always") the server forces each message
// to disk before it acknowledges the publish; with an interval it syncs
// in the background, and a crash of the host may lose what it
// acknowledged within the last interval.
//
// Topology is the registry entry: Validate checks the [embedded] section,
// and Features declares topics (subjects) and durable dead letters (a
// stream of their own in the same directory); one process has no
// partitions and no Redis.
package embedded
