// Package try runs events through the observers of one or two configs
// without sending anything: matching, conditions and templates as the
// router runs them, and each action rendered (handlers.Renderer) instead
// of executed. It compares the effects of an old and a new config event
// by event, for `millrace try`.
package try
