// Package cluster runs millrace against clustered engines with failures
// injected: a three-node JetStream cluster whose stream leader is killed,
// one of whose nodes is cut off for ten seconds, while one of three
// partitioned workers is killed too, and nothing may be lost, run twice
// or out of order per entity.
package cluster
