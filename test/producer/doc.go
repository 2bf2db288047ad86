// Package producer holds a test of a program that writes events onto
// millrace's JetStream stream as docs/bus.md tells it to, with the
// documented Go helper (bus/jetstream's Publisher, bus.SetRouting) and
// with nats.go alone, and checks that millrace runs them in order per
// entity and in parallel across entities.
package producer
