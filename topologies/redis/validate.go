package redis

import (
	"errors"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
)

// Topology returns the "redis" topology's registry entry: a stream per
// topic, partitions (redis.partitions), dead letters in a Redis stream.
func Topology() topologies.Topology {
	return topologies.Topology{
		Name: "redis", Build: Build, Validate: Validate,
		Features: config.Features{Topics: true, Partitions: true, DurableDeadLetters: true}, Watermill: true,
		GCPercent: topologies.ServicesGCPercent,
	}
}

// Validate checks the [redis] section, which the topology needs.
func Validate(cfg *config.Config) error {
	var errs []error
	r := cfg.Redis
	if (r.URL == "") == (r.URLEnv == "") {
		errs = append(errs, config.Errorf("redis", "set exactly one of url and url_env"))
	}
	errs = append(errs, config.CheckName("redis.group", r.Group))
	if r.Consumer != "" {
		errs = append(errs, config.CheckName("redis.consumer", r.Consumer))
	}
	if r.MaxLen < 0 {
		errs = append(errs, config.Errorf("redis.max_len", "must not be negative (0 keeps every event)"))
	}
	if r.WaitReplicas < 0 || r.WaitReplicas > 100 {
		errs = append(errs, config.Errorf("redis.wait_replicas", "must be between 0 (no WAIT) and 100, got %d", r.WaitReplicas))
	}
	// The WAIT rides in the XADDs' pipeline, which the client's read
	// timeout (3s) bounds.
	if d := r.WaitTimeout.D(); d < time.Millisecond || d > 2*time.Second {
		errs = append(errs, config.Errorf("redis.wait_timeout", "%s is out of range [1ms, 2s]", r.WaitTimeout))
	}
	errs = append(errs,
		config.CheckPositive("redis.claim_idle", r.ClaimIdle),
		topologies.CheckPartitions("redis", r.Partitions, r.PartitionTTL))
	return errors.Join(errs...)
}
