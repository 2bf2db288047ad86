package cli

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/event"
)

// docBlock returns the lines of the first fenced block of doc that
// follows the line after, without the fences.
func docBlock(t *testing.T, doc, after string) []string {
	t.Helper()
	i := strings.Index(doc, after)
	if i < 0 {
		t.Fatalf("docs/try.md: %q not found", after)
	}
	rest := doc[i:]
	start := strings.Index(rest, "```")
	if start < 0 {
		t.Fatalf("docs/try.md: no block after %q", after)
	}
	rest = rest[start:]
	rest = rest[strings.Index(rest, "\n")+1:]
	end := strings.Index(rest, "```")
	return strings.Split(strings.TrimSuffix(rest[:end], "\n"), "\n")
}

// commandOutput returns the lines doc shows after the line "$ cmd", up
// to the next prompt or the end of the block.
func commandOutput(t *testing.T, doc, cmd string) []string {
	t.Helper()
	lines := strings.Split(doc, "\n")
	for i, l := range lines {
		if l == "$ "+cmd {
			var out []string
			for _, o := range lines[i+1:] {
				if strings.HasPrefix(o, "$ ") && o != "$ echo $?" || strings.HasPrefix(o, "```") {
					break
				}
				out = append(out, o)
			}
			return out
		}
	}
	t.Fatalf("docs/try.md: no %q", cmd)
	return nil
}

// TestTryDocWalkthrough runs the walk-through of docs/try.md: its two
// configs (the second made with its diff) on the four events its output
// shows, and checks that try prints what the page shows, line for line,
// the webhook signatures aside (they depend on the secret and the time
// the events were sent, which the page does not give).
func TestTryDocWalkthrough(t *testing.T) {
	raw, err := os.ReadFile("../../../docs/try.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	oldCfg := strings.Join(docBlock(t, doc, "## A real change, step by step"), "\n") + "\n"
	newCfg := oldCfg
	for _, l := range docBlock(t, doc, "The new config only notifies") {
		if strings.HasPrefix(l, "-") {
			continue
		}
		if strings.HasPrefix(l, "+") {
			key := strings.SplitN(l[1:], " = ", 2)[0]
			old := regexp.MustCompile("(?m)^" + regexp.QuoteMeta(key) + " = .*$")
			if !old.MatchString(newCfg) {
				t.Fatalf("docs/try.md diff: %q changes no line", l)
			}
			newCfg = old.ReplaceAllLiteralString(newCfg, l[1:])
		}
	}
	t.Setenv("SHIPPED_HOOK_SECRET", "whsec_"+"c2VjcmV0LWtleS0xMjM0NTY3OA==")
	oldPath, newPath := writeConfig(t, oldCfg), writeConfig(t, newCfg)

	// The events of the page's output: orders 1001 (total 250), 1002
	// (40) and 1003 ("n/a") shipped, order 1004 inserted.
	shipped := map[string]event.Change{"status": {Old: "paid", New: "shipped"}}
	at := time.Date(2026, 12, 4, 9, 0, 0, 0, time.UTC)
	evs := []*event.Event{
		{ID: "e2c7d126-8d95-4445-aa1f-520ee6b28ce6", Type: event.Update, Entity: "Order", EntityID: "1001",
			Data: map[string]any{"status": "shipped", "total": 250}, Changes: shipped, Timestamp: at},
		{ID: "37c1559e-4c6e-485e-afd7-da5e1bd5c40f", Type: event.Update, Entity: "Order", EntityID: "1002",
			Data: map[string]any{"status": "shipped", "total": 40}, Changes: shipped, Timestamp: at},
		{ID: "9ea97b14-6ae9-4977-998f-159e7f4abe8e", Type: event.Update, Entity: "Order", EntityID: "1003",
			Data: map[string]any{"status": "shipped", "total": "n/a"}, Changes: shipped, Timestamp: at},
		{ID: "033e4a74-7c80-408b-9314-2431ff475e9c", Type: event.Insert, Entity: "Order", EntityID: "1004",
			Data: map[string]any{"status": "new", "total": 75}, Timestamp: at},
	}
	events := writeEvents(t, evs)

	signature := regexp.MustCompile(`Webhook-Signature: v1,\S+`)
	for _, c := range []struct {
		prompt string
		args   []string
	}{
		{"millrace try -c new.toml events.jsonl", []string{"try", "-c", newPath, events}},
		{"millrace try -c new.toml --against old.toml events.jsonl", []string{"try", "-c", newPath, "--against", oldPath, events}},
	} {
		code, stdout, stderr := runCLI(t, c.args...)
		want := commandOutput(t, doc, c.prompt)
		if want[len(want)-1] == "1" && want[len(want)-2] == "$ echo $?" {
			want = want[:len(want)-2]
		}
		got := strings.Split(strings.TrimSuffix(stdout+stderr+"\n", "\n"), "\n")
		if code != ExitFailure {
			t.Errorf("%s: exit %d; the page shows 1", c.prompt, code)
		}
		mask := func(ls []string) string {
			out := make([]string, len(ls))
			for i, l := range ls {
				out[i] = signature.ReplaceAllString(l, "Webhook-Signature: v1,…")
			}
			return strings.Join(out, "\n")
		}
		if g, w := mask(got), mask(want); g != w {
			t.Errorf("%s prints\n%s\n\ndocs/try.md shows\n%s", c.prompt, g, w)
		}
	}
}
