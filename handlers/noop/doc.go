// Package noop is the "noop" action: it does nothing and succeeds. An
// observer with a noop action still runs through the whole delivery
// stack (condition, dedup ledger, retries, result cache), so it measures
// and tests millrace's own cost, and it marks events as handled without
// an effect (a drain, a dry run of a new observer's filter).
package noop
