// Package nats is the "nats" topology: changes are captured from the
// [[sources]] databases by one leased bridge per source (group "bridge"
// of each change log) and published to a NATS JetStream stream, with
// Nats-Msg-Id set to the change id so the stream drops republished
// changes within its duplicate window (dedup.window). Observer workers,
// in as many processes as needed, share one durable pull consumer.
// Subjects are <subject_prefix>.<topic>.<source>.<entity>.<op>.
//
// The stream is created at start, or updated to the config (subjects,
// max age, replicas, duplicate window). The dedup ledger and the result
// cache are in Redis when redis.url (or url_env) is set, in each
// process's memory otherwise; dead letters go to a stream of their own,
// <stream>_DLQ, under <subject_prefix>_dlq.
//
// Run `millrace run --role capture` for the bridge and `--role observe`
// for the workers, or the default role all in every process: the lease
// keeps one bridge per source active either way.
//
// Topology is the registry entry. The bus and its stores are built by
// topologies.BuildJetStream, which the multidb topology shares; its
// checks of the [nats] section are topologies.ValidateNATS, its features
// topologies.JetStreamFeatures.
package nats
