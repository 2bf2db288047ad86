package capture

import "encoding/json"

// Diff returns the changes of an UPDATE from its before- and after-image
// (two JSON objects) as the trigger capture computes them: {field: {old,
// new}} for the changed, added (old null) and removed (new null)
// top-level fields, numbers compared by value. The WAL capture uses it so
// that both modes report the same changes.
func Diff(before, after []byte) (json.RawMessage, error) { return diff(before, after) }
