// Package handlers holds observers and actions: the action registry that
// built-in and user action types register into, the compiled observers
// (matching, conditions, templates) and the errors that steer retries.
//
// A user's action type implements Action and registers with Register; it
// never imports Watermill. The router adapts messages to Execute calls,
// made through the function Execute, which turns a panic into a
// permanent error. Package actiontest tests an action type the same way.
//
// Check validates the observers of a config without building them. An
// action type whose config needs more than its own section (another
// section, or a feature of the topology, config.Features) implements
// ConfigChecker, which Check calls with the whole config and the
// topology's features; this package does not import the topologies.
package handlers
