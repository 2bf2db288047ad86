// Package bench is millrace's benchmark suite, run by the
// millrace-bench command (cmd/millrace-bench) and `make bench`. It is
// internal: a custom millrace binary neither links nor pins it.
//
// For each topology it starts millrace in the process (router.New and
// Run, with a config made for the run: its own stream, consumer, key
// prefix and schemas), with one observer holding one action, and pushes
// change events through the whole pipeline: rows inserted into a watched
// table where the topology captures changes, events published through
// the router's bus publisher otherwise. It measures throughput with a
// no-op action and with a webhook to a receiver in the process,
// end-to-end latency at a steady rate and at saturation, CPU time and
// peak RSS, and the cost of dedup and the result cache. Beside every
// figure it puts the ceiling: the same publish-then-consume job written
// straight on the client library (NATS JetStream, Redis Streams or
// PostgreSQL) with batching, measured in the same run.
//
// The webhook scenario's receiver runs in the same process, so its CPU
// time is in millrace's figure: it checks signatures with
// webhook.VerifyMAC and pooled MACs, as a busy receiver would.
//
// Run writes results.json (machine-readable), RESULTS.md (tables and the
// issue's targets, met or missed) and chart.png. Topologies that are not
// registered in the binary are reported as not available; their ceilings
// are measured all the same.
package bench
