// Package handlers is what an action author uses: the Action interface
// and ActionFunc, the registry that built-in and user action types
// register into (Register, Registry, Config, ConfigChecker), what a
// build function receives (Deps), the errors that steer retries
// (Permanent, RetryAfter), templates over the event and the values
// they and conditions compare (View, Equal).
//
// A user's action type implements Action and registers with Register; it
// never imports Watermill. Every action runs through the function
// Execute, which turns a panic into a permanent error. Package
// actiontest tests an action type the same way.
//
// An action type whose config needs more than its own section (another
// section, or a feature of the topology, config.Features) implements
// ConfigChecker; package engine calls it with the whole config and the
// topology's features, so this package does not import the topologies.
// The observers themselves (matching, conditions, compiling a config's
// observers into built actions) are package engine's.
package handlers
