// Package engine turns a config's observers into running rules: Check
// validates them without building anything, Compile builds their
// actions from a handlers.Registry, and an Observer matches events by
// type and entity (Matches, and the Matcher index for many observers),
// evaluates its condition (Accepts) and runs its actions (Run), each
// through handlers.Execute.
//
// Conditions are expr-lang programs compiled once (CompileCondition)
// with the functions of the original system (has_field, field_changed,
// field_changed_to, field_changed_from) and patches that make == compare
// event values by value and make an absent field read as nil; see
// docs/conditions.md.
//
// The delivery policy around Run (dedup, result cache, retries, circuit
// breakers, dead letters) is package middleware's.
package engine
