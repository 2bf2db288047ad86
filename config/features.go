package config

// Features is what a topology provides beyond carrying the events of
// router.topic. A topology declares them when it registers
// (topologies.Registry); action types read them at validate time
// (handlers.ConfigChecker), so that a config asking for something its
// topology lacks is refused by `millrace validate` instead of failing,
// or silently doing something else, at run time.
//
// The zero value provides nothing: it is also what a topology that is
// not registered gets.
type Features struct {
	// Topics: the bus carries topics besides router.topic, each kept
	// apart (a subject, a stream), so the publish action can put
	// messages on them for other consumers.
	Topics bool
	// Partitions: the bus can split the events by entity into
	// partitions, each leased to one worker process, which keeps an
	// entity's order across workers. On a topology without it,
	// nats.partitions and redis.partitions are errors (Registry.Check).
	Partitions bool
	// DurableDeadLetters: the dead-letter store survives a restart of
	// the process (a stream, a table), so `millrace dlq` finds entries
	// written before it. Without it, `millrace dlq list` says that the
	// entries vanish with the process.
	DurableDeadLetters bool
	// SourcesAreBus: the change logs of [[sources]] are the bus itself
	// (the postgres topology), so a process in the observe role reads
	// them too. Without it an observe-only process never opens the
	// sources, and CheckEnv does not ask for their *_env variables.
	SourcesAreBus bool
}
