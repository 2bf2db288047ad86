package capture_test

import (
	"testing"

	"github.com/millrace/millrace/bus/capture"
)

// TestSameJSON compares values as an UPDATE's changes need: by value,
// numbers numerically, strings after their escapes.
func TestSameJSON(t *testing.T) {
	for _, c := range []struct {
		x, y string
		want bool
	}{
		{`"new"`, `"new"`, true},
		{`"new"`, `"paid"`, false},
		{` "new"`, `"new" `, true},
		{`"caf\u00e9"`, `"café"`, true},
		{`"a\"b"`, `"a\"c"`, false},
		{`"1"`, `1`, false},
		{`10.5`, `10.50`, true},
		{`1`, `1.0`, true},
		{`1`, `2`, false},
		{`true`, `false`, false},
		{`true`, `true`, true},
		{`null`, `"null"`, false},
		{`{"a": 1, "b": [1, 2]}`, `{"b":[1,2],"a":1.0}`, true},
		{`{"a": 1}`, `{"a": 2}`, false},
		{`[1, 2]`, `[2, 1]`, false},
		{``, `1`, false},
		{`{"a":`, `{"a":`, true},
		{`{"a":`, `{"a": `, false},
	} {
		if got := capture.SameJSON([]byte(c.x), []byte(c.y)); got != c.want {
			t.Errorf("SameJSON(%s, %s) = %v, want %v", c.x, c.y, got, c.want)
		}
	}
}
