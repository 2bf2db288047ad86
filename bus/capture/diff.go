package capture

// SameJSON reports whether two JSON values are equal as the trigger
// capture compares an UPDATE's before and after values: by value, with
// numbers compared numerically (10.5 and 10.50 are the same). The WAL
// capture uses it so that both modes report the same changes.
func SameJSON(x, y []byte) bool { return sameJSON(x, y) }
