// Package runs keeps the goroutines a subscriber starts, one per
// Subscribe, so that its Close can stop every one and wait for it; and
// Sleep, the wait between the tries of such a run.
package runs
