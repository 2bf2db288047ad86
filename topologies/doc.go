// Package topologies holds the registry of deployment topologies and the
// Backend a topology builds for the router: the bus (a Watermill
// Publisher and Subscriber), the dead-letter store, optionally the dedup
// ledger, the result cache and the capture of changes.
//
// A topology registers a Topology: its name (the value of the topology
// key), its Build, its Validate (the checks of the config sections it
// uses, each error with its key path) and its config.Features (topics
// beside router.topic, partitions, a durable dead-letter store, Redis),
// which actions check at validate time. Nothing outside a topology's
// package names it: a topology is its own package plus one registration
// line (cli.Defaults for the built-ins, MustRegister in a custom binary;
// see examples/custom-topology). CheckPartitions is the check the
// topologies with partitions share.
//
// It also holds what several topologies share: OpenSources connects to
// the [[sources]] databases (capture schema and triggers when asked) and
// gives one change-log reader per source; NewRedisClient and
// ConnectRedis open the [redis] section's client; BuildJetStream,
// ValidateNATS and JetStreamFeatures are the JetStream bus with its
// stores, for the nats and multidb topologies. A topology imports this
// package and bus/, never another topology (topology_test.go checks it).
//
// The sub-packages are the five built-in topologies (embedded, postgres,
// redis, nats, multidb); the bus components they are made of are under
// bus/.
package topologies
