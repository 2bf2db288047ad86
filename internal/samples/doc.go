// Package samples holds what the tests of conditions (engine) and
// templates (handlers) evaluate on: a sample event with every field
// set, the envelope decoder as the bus uses it, and the example tables
// of docs/conditions.md and docs/templates.md, which those tests check
// so that the pages stay true.
package samples
