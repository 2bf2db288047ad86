package try

import (
	"slices"
	"testing"

	"github.com/millrace/millrace/handlers"
)

func TestLineDiff(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		a, b, want []string
	}{
		{nil, nil, nil},
		{[]string{"x"}, []string{"x"}, nil},
		{[]string{"a", "b", "c"}, []string{"a", "c"}, []string{"- b"}},
		{[]string{"a", "c"}, []string{"a", "b", "c"}, []string{"+ b"}},
		{[]string{"a", "b"}, []string{"a", "B"}, []string{"- b", "+ B"}},
		{nil, []string{"a"}, []string{"+ a"}},
	} {
		if got := lineDiff(tt.a, tt.b); !slices.Equal(got, tt.want) {
			t.Errorf("lineDiff(%q, %q) = %q, want %q", tt.a, tt.b, got, tt.want)
		}
	}
}

// A JSON body is indented before it is diffed, so that the diff names
// the fields that changed rather than the whole line.
func TestEffectDiffByField(t *testing.T) {
	t.Parallel()
	old := &handlers.Effect{Kind: "webhook", Method: "POST", Target: "https://x", Body: `{"a":1,"b":2}`}
	next := &handlers.Effect{Kind: "webhook", Method: "POST", Target: "https://x", Body: `{"a":1,"b":3}`}
	got := lineDiff(effectLines(old), effectLines(next))
	if want := []string{`-   "b": 2`, `+   "b": 3`}; !slices.Equal(got, want) {
		t.Errorf("diff %q, want %q", got, want)
	}
	changes := diffEffects(
		[]Rendered{{Action: "observers.a.actions[0]", Type: "webhook", Effect: old}, {Action: "observers.b.actions[0]", Type: "log", Effect: &handlers.Effect{Kind: "log"}}},
		[]Rendered{{Action: "observers.a.actions[0]", Type: "webhook", Effect: next}, {Action: "observers.c.actions[0]", Type: "mine", NotRendered: true}})
	var kinds []string
	for _, c := range changes {
		kinds = append(kinds, c.Change+" "+c.Action)
	}
	if want := []string{"changed observers.a.actions[0]", "removed observers.b.actions[0]", "added observers.c.actions[0]"}; !slices.Equal(kinds, want) {
		t.Errorf("changes %q, want %q", kinds, want)
	}
}
