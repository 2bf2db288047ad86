package handlers_test

import (
	"testing"

	"github.com/millrace/millrace/handlers"
)

func TestEqual(t *testing.T) {
	cases := []struct {
		a, b any
		want bool
	}{
		{int64(100), 100.0, true},
		{100.0, int64(100), true},
		{int64(100), 100, true},
		{uint64(7), int64(7), true},
		{float32(1.5), 1.5, true},
		{int64(100), 100.5, false},
		{int64(1<<53 + 1), float64(1 << 53), false},
		{int64(100), "100", false},
		{"a", "a", true},
		{true, true, true},
		{true, 1, false},
		{nil, nil, true},
		{nil, map[string]any(nil), true},
		{nil, 0, false},
		{0, nil, false},
		{map[string]any{"a": int64(1), "b": []any{int64(2)}}, map[string]any{"b": []any{2.0}, "a": 1.0}, true},
		{map[string]any{"a": int64(1)}, map[string]any{"a": int64(2)}, false},
		{map[string]any{"a": nil}, map[string]any{"b": nil}, false},
		{[]any{int64(1), "x"}, []any{1.0, "x"}, true},
		{[]any{int64(1)}, []any{int64(1), int64(2)}, false},
	}
	for _, c := range cases {
		if got := handlers.Equal(c.a, c.b); got != c.want {
			t.Errorf("Equal(%#v, %#v) = %v; want %v", c.a, c.b, got, c.want)
		}
	}
}
