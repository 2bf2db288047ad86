// Package lazyctx makes the contexts of the per-message path, an
// action's timeout and a message's own cancellation, without their cost
// when nobody waits on them.
//
// context.WithTimeout and context.WithCancel register the new context
// with its parent and, for a timeout, start a runtime timer. On a path
// that makes one per message or per action that was a measured part of
// the CPU, also for the in-process handlers that never wait on their
// context. The contexts here answer Deadline and Err from the clock and
// the parent, and make the context package's own on the first Done,
// which an HTTP call, a query or a derived context (WithCancel,
// AfterFunc) asks for at once; from then on they are that context.
//
// One difference remains: context.Cause before the first Done reads the
// parent's cause, as nothing has been cancelled yet.
package lazyctx
