// Package runs keeps the goroutines a subscriber starts, one per
// Subscribe, so that its Close can stop every one and wait for it; and
// Sleep, the wait between tries that ends with its context (such a run's
// retries, and the handlers' through middleware.Sleep).
package runs
