// Package middleware is the delivery policy between the bus and the
// actions, and its building blocks; the stores behind it are package
// stores'.
//
// Each observer's events go through a stack of Watermill
// message.HandlerMiddleware, built from the config (Plan, Policy.Stack;
// `millrace config --stack` prints it), outermost first:
//
//	failure policy  a final failure is dead-lettered, logged or dropped
//	condition       the observer's condition skips the event (when set)
//	ledger          dedup claim and result-cache lookup (when either is on)
//	retry           rounds of the pending actions, with backoff
//	actions         each action through the result cache and its
//	                endpoint's circuit breaker
//
// Run hands one observer's Delivery to its stack. The building blocks are
// the Ledger (dedup and result cache over a stores.Ledger, ADR 4 and 5),
// Backoff and Breakers.
package middleware
