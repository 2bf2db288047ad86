package try

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/millrace/millrace/handlers"
)

// Report is the outcome of a dry run over a file of events.
type Report struct {
	// Events is the number of events read (malformed lines excluded).
	Events int `json:"events"`
	// Against: an old config was given, and Results hold changes.
	Against   bool        `json:"against"`
	Malformed []Malformed `json:"malformed,omitempty"`
	Observers []Summary   `json:"observers"`
	// Results lists the events that have something to show: effects
	// (without an old config), changes, or errors.
	Results []Result `json:"results"`
	// Regressions counts the events the new config errors on while the
	// old one handled them without error (without an old config: the
	// events the new one errors on).
	Regressions int `json:"regressions"`
}

// Malformed is a line that is not an event envelope.
type Malformed struct {
	Line  int    `json:"line"`
	Error string `json:"error"`
}

// Summary counts one observer's work over all events, for the old and
// the new config (old counts stay zero without an old config).
type Summary struct {
	Observer   string `json:"observer"`
	MatchedOld int    `json:"matched_old"`
	MatchedNew int    `json:"matched_new"`
	ActionsOld int    `json:"actions_old"`
	ActionsNew int    `json:"actions_new"`
	ErrorsOld  int    `json:"errors_old"`
	ErrorsNew  int    `json:"errors_new"`
}

// Result is one event's effects and errors.
type Result struct {
	Line     int    `json:"line"`
	ID       string `json:"id"`
	Type     string `json:"event_type"`
	Entity   string `json:"entity_type"`
	EntityID string `json:"entity_id"`
	// Effects are the new config's effects, when there is no old one.
	Effects   []Rendered `json:"effects,omitempty"`
	Changes   []Change   `json:"changes,omitempty"`
	ErrorsOld []Error    `json:"errors_old,omitempty"`
	ErrorsNew []Error    `json:"errors_new,omitempty"`
}

// Change is an effect that one config has and the other has not
// ("added", "removed"), or that differs between them ("changed").
// Effects are paired by action key path: observer name and place in its
// list.
type Change struct {
	Change string           `json:"change"`
	Action string           `json:"action"`
	Type   string           `json:"type"`
	Old    *handlers.Effect `json:"old,omitempty"`
	New    *handlers.Effect `json:"new,omitempty"`
	// NotRendered: the action type cannot render its effect; only its
	// running or not is compared.
	NotRendered bool `json:"not_rendered,omitempty"`
	// Diff lists, for a change, the lines of the effect that differ:
	// "- " old, "+ " new. JSON bodies are indented first.
	Diff []string `json:"diff,omitempty"`
}

// Compare reads events from r and runs each through next and, when old
// is not nil, through old.
func Compare(ctx context.Context, old, next *Set, r io.Reader) (*Report, error) {
	rep := &Report{Against: old != nil}
	sums := map[string]*Summary{}
	var order []string
	sum := func(name string) *Summary {
		s := sums[name]
		if s == nil {
			s = &Summary{Observer: name}
			sums[name] = s
			order = append(order, name)
		}
		return s
	}
	for _, n := range next.Observers() {
		sum(n)
	}
	if old != nil {
		for _, n := range old.Observers() {
			sum(n)
		}
	}
	err := ReadEvents(r, func(l Line) error {
		if l.Err != nil {
			rep.Malformed = append(rep.Malformed, Malformed{Line: l.N, Error: l.Err.Error()})
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rep.Events++
		ev := l.Event
		res := Result{Line: l.N, ID: ev.ID, Type: string(ev.Type), Entity: ev.Entity, EntityID: ev.EntityID}
		newEffects, newErrs := collect(next.Run(ctx, ev), func(o Outcome) {
			s := sum(o.Observer)
			s.ErrorsNew += len(o.Errors)
			if o.Accepted {
				s.MatchedNew++
				s.ActionsNew += len(o.Effects)
			}
		})
		res.ErrorsNew = newErrs
		if old == nil {
			res.Effects = newEffects
			if len(newErrs) > 0 {
				rep.Regressions++
			}
		} else {
			oldEffects, oldErrs := collect(old.Run(ctx, ev), func(o Outcome) {
				s := sum(o.Observer)
				s.ErrorsOld += len(o.Errors)
				if o.Accepted {
					s.MatchedOld++
					s.ActionsOld += len(o.Effects)
				}
			})
			res.ErrorsOld = oldErrs
			res.Changes = diffEffects(oldEffects, newEffects)
			if len(newErrs) > 0 && len(oldErrs) == 0 {
				rep.Regressions++
			}
		}
		if len(res.Effects)+len(res.Changes)+len(res.ErrorsOld)+len(res.ErrorsNew) > 0 {
			rep.Results = append(rep.Results, res)
		}
		return nil
	})
	for _, n := range order {
		rep.Observers = append(rep.Observers, *sums[n])
	}
	return rep, err
}

func collect(outs []Outcome, count func(Outcome)) ([]Rendered, []Error) {
	var effects []Rendered
	var errs []Error
	for _, o := range outs {
		count(o)
		effects = append(effects, o.Effects...)
		errs = append(errs, o.Errors...)
	}
	return effects, errs
}

func diffEffects(old, next []Rendered) []Change {
	byPath := make(map[string]Rendered, len(old))
	for _, r := range old {
		byPath[r.Action] = r
	}
	var out []Change
	seen := map[string]bool{}
	for _, n := range next {
		seen[n.Action] = true
		o, ok := byPath[n.Action]
		switch {
		case !ok:
			out = append(out, Change{Change: "added", Action: n.Action, Type: n.Type, New: n.Effect, NotRendered: n.NotRendered})
		case o.Type != n.Type || o.NotRendered != n.NotRendered || !reflect.DeepEqual(o.Effect, n.Effect):
			out = append(out, Change{Change: "changed", Action: n.Action, Type: n.Type, Old: o.Effect, New: n.Effect,
				NotRendered: n.NotRendered, Diff: lineDiff(effectLines(o.Effect), effectLines(n.Effect))})
		}
	}
	for _, o := range old {
		if !seen[o.Action] {
			out = append(out, Change{Change: "removed", Action: o.Action, Type: o.Type, Old: o.Effect, NotRendered: o.NotRendered})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Action < out[j].Action })
	return out
}

// effectLines shows an effect as lines to diff: the request line, the
// headers sorted, then the body (indented when it is JSON).
func effectLines(e *handlers.Effect) []string {
	if e == nil {
		return []string{"(not rendered)"}
	}
	lines := []string{strings.TrimSpace(e.Kind + " " + e.Method + " " + e.Target)}
	for _, k := range slices.Sorted(maps.Keys(e.Headers)) {
		lines = append(lines, k+": "+e.Headers[k])
	}
	body := e.Body
	if json.Valid([]byte(body)) {
		var b bytes.Buffer
		if json.Indent(&b, []byte(body), "", "  ") == nil {
			body = b.String()
		}
	}
	if body != "" {
		lines = append(lines, "")
		lines = append(lines, strings.Split(strings.TrimSuffix(body, "\n"), "\n")...)
	}
	return lines
}

// maxDiffLines bounds the LCS table; longer bodies are shown as a whole
// removal and addition.
const maxDiffLines = 2000

// lineDiff returns the lines only in a ("- ") and only in b ("+ "), in
// order, by a longest common subsequence.
func lineDiff(a, b []string) []string {
	if len(a) > maxDiffLines || len(b) > maxDiffLines {
		var out []string
		for _, l := range a {
			out = append(out, "- "+l)
		}
		for _, l := range b {
			out = append(out, "+ "+l)
		}
		return out
	}
	// lcs[i][j] is the LCS length of a[i:] and b[j:].
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []string
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] == b[j]:
			i, j = i+1, j+1
		case lcs[i+1][j] >= lcs[i][j+1]:
			out = append(out, "- "+a[i])
			i++
		default:
			out = append(out, "+ "+b[j])
			j++
		}
	}
	for ; i < len(a); i++ {
		out = append(out, "- "+a[i])
	}
	for ; j < len(b); j++ {
		out = append(out, "+ "+b[j])
	}
	return out
}

// WriteJSON writes the report as one indented JSON document.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the summary table, then each result.
func (r *Report) WriteText(w io.Writer) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "events: %d", r.Events)
	if len(r.Malformed) > 0 {
		fmt.Fprintf(&b, " (%d malformed line(s) skipped)", len(r.Malformed))
	}
	b.WriteString("\n")
	for _, m := range r.Malformed {
		fmt.Fprintf(&b, "line %d: %s\n", m.Line, m.Error)
	}
	b.WriteString("\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	if r.Against {
		fmt.Fprintln(tw, "observer\tmatched old\tmatched new\tactions old\tactions new\terrors old\terrors new")
		for _, s := range r.Observers {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\n", s.Observer, s.MatchedOld, s.MatchedNew, s.ActionsOld, s.ActionsNew, s.ErrorsOld, s.ErrorsNew)
		}
	} else {
		fmt.Fprintln(tw, "observer\tmatched\tactions\terrors")
		for _, s := range r.Observers {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", s.Observer, s.MatchedNew, s.ActionsNew, s.ErrorsNew)
		}
	}
	_ = tw.Flush()
	for _, res := range r.Results {
		fmt.Fprintf(&b, "\nline %d: %s %s %s (id %s)\n", res.Line, res.Type, res.Entity, res.EntityID, res.ID)
		for _, e := range res.Effects {
			writeEffect(&b, "  ", e.Action, e.Type, e.Effect)
		}
		for _, c := range res.Changes {
			switch c.Change {
			case "added":
				writeEffect(&b, "  + ", c.Action, c.Type, c.New)
			case "removed":
				writeEffect(&b, "  - ", c.Action, c.Type, c.Old)
			default:
				fmt.Fprintf(&b, "  ~ %s (%s) changed:\n", c.Action, c.Type)
				for _, l := range c.Diff {
					fmt.Fprintf(&b, "      %s\n", l)
				}
			}
		}
		for _, e := range res.ErrorsOld {
			fmt.Fprintf(&b, "  error (old) %s: %s\n", e.Path, e.Error)
		}
		for _, e := range res.ErrorsNew {
			fmt.Fprintf(&b, "  error %s: %s\n", e.Path, e.Error)
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

func writeEffect(b *bytes.Buffer, prefix, action, typ string, e *handlers.Effect) {
	if e == nil {
		fmt.Fprintf(b, "%s%s (%s): would run, not rendered\n", prefix, action, typ)
		return
	}
	fmt.Fprintf(b, "%s%s (%s) %s\n", prefix, action, typ, strings.TrimSpace(e.Method+" "+e.Target))
	if e.Body != "" {
		body := strings.TrimSuffix(e.Body, "\n")
		for _, l := range strings.Split(body, "\n") {
			fmt.Fprintf(b, "%s    %s\n", strings.Repeat(" ", len(prefix)), l)
		}
	}
}
