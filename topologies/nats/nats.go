package nats

import "github.com/millrace/millrace/topologies"

// Register adds the "nats" topology to r.
func Register(r *topologies.Registry) error { return r.Register(Topology()) }

// Topology returns the "nats" topology's registry entry: the JetStream
// bus of package topologies, with its checks of [nats] and its features.
func Topology() topologies.Topology {
	return topologies.Topology{
		Name: "nats", Build: topologies.BuildJetStream, Validate: topologies.ValidateNATS,
		Features: topologies.JetStreamFeatures(), Notes: topologies.JetStreamNotes, Watermill: true,
		GCPercent: topologies.ServicesGCPercent,
	}
}
