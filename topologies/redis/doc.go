// Package redis is the "redis" topology: changes are captured from the
// [[sources]] databases by one leased bridge per source (group "bridge"
// of each change log) and appended to a Redis stream, <key_prefix><topic>
// (redisstream, capped with MAXLEN ~ redis.max_len); observer workers share
// the consumer group redis.group, and a live worker claims the entries
// left pending on a dead one after redis.claim_idle. The dedup ledger,
// the result cache and the dead letters (<key_prefix>dlq) are in the
// same Redis.
//
// Topology is the registry entry: Validate checks the [redis] section,
// which the topology needs, and Features declares topics (a stream per
// topic), partitions (redis.partitions), and durable dead letters.
package redis
