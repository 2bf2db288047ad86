package nats

import (
	"errors"
	"regexp"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
)

// Topology returns the "nats" topology's registry entry.
func Topology() topologies.Topology {
	return topologies.Topology{Name: "nats", Build: Build, Validate: Validate, Features: Features()}
}

// Features are the nats topology's: subjects for every topic, partitions
// (nats.partitions), dead letters in a stream, and Redis for the stores
// when [redis] is set.
func Features() config.Features {
	return config.Features{Topics: true, Partitions: true, DurableDeadLetters: true, Redis: true}
}

var (
	// streamRE matches JetStream stream and durable consumer names.
	streamRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	// subjectRE matches a literal subject: tokens without wildcards.
	subjectRE = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
)

// Validate checks the [nats] section.
func Validate(cfg *config.Config) error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, config.Errorf(path, format, args...)) }
	n := cfg.NATS
	if n.URL == "" {
		add("nats.url", "must not be empty")
	}
	if !streamRE.MatchString(n.Stream) {
		add("nats.stream", "%q must hold only letters, digits, '_' and '-'", n.Stream)
	}
	if !subjectRE.MatchString(n.SubjectPrefix) {
		add("nats.subject_prefix", "%q must be dot-separated tokens of letters, digits, '_' and '-'", n.SubjectPrefix)
	}
	if !streamRE.MatchString(n.Consumer) {
		add("nats.consumer", "%q must hold only letters, digits, '_' and '-'", n.Consumer)
	}
	errs = append(errs, config.CheckPositive("nats.ack_wait", n.AckWait))
	if n.MaxDeliver != -1 && n.MaxDeliver < 1 {
		add("nats.max_deliver", "must be -1 (unlimited) or at least 1, got %d", n.MaxDeliver)
	}
	if n.MaxAge < 0 {
		add("nats.max_age", "must not be negative (0 keeps events forever)")
	}
	if n.Replicas < 1 || n.Replicas > 5 {
		add("nats.replicas", "must be between 1 and 5, got %d", n.Replicas)
	}
	errs = append(errs, topologies.CheckPartitions("nats", n.Partitions, n.PartitionTTL))
	return errors.Join(errs...)
}
