// Package topologies holds the registry of deployment topologies. Each
// topology, in its own sub-package, builds a Backend from the config: the
// bus (a Watermill Publisher and Subscriber) and, in later layers, the
// stores and the capture of changes. Nothing outside a topology's package
// names its backend.
package topologies
