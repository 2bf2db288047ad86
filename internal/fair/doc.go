// Package fair queues waiters by tenant and serves the tenants in turn.
//
// A FIFO queue serves a tenant that floods it before anyone who comes
// after: with ten thousand waiters of one tenant ahead, another tenant's
// one waiter waits for all of them. Queue keeps one FIFO per tenant and
// takes the head of each in round-robin order, so a waiter waits for at
// most one turn of every tenant that waits beside it, whatever their
// numbers. The in-flight slots of the bus's lanes and the delivery limit
// of each endpoint wait in one.
package fair
