// Package memory is a toy topology registered from outside millrace's
// core: its bus is Watermill's GoChannel pub/sub and its dead letters a
// list in memory, so one process runs alone and forgets everything when
// it stops. It exists to show what a topology is (a Build, a Validate
// and a feature set, registered with one line; see ../README.md), and
// to test that the registry is open. Use the embedded topology for a
// single process that keeps its events.
//
// Events are handled one at a time, in the order they were published: a
// publish on the bus returns once the observers handled the event
// (GoChannel's BlockPublishUntilSubscriberAck). So an action must not
// publish onto router.topic, which would wait for itself; Validate
// refuses it.
package memory
