package verify

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Markdown writes the report: a heading line with the setup, and a table
// with a line per scenario.
func (r *Report) Markdown(w io.Writer) {
	perEntity := r.Opts.Changes / max(r.Opts.Entities, 1)
	fmt.Fprintf(w, "Topology **%s** (capture: %s, %d worker(s)): %d changes per scenario (%d entities × %d), outage %s; took %s.\n\n",
		r.Topology, r.Capture, r.Workers, perEntity*r.Opts.Entities, r.Opts.Entities, perEntity, r.Opts.Outage, r.Took.Round(time.Second))
	fmt.Fprintln(w, "| scenario | changes | lost | duplicate effects | reordered | catch-up s | result |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---|")
	for _, row := range r.Rows {
		if row.Skipped != "" {
			fmt.Fprintf(w, "| %s | - | - | - | - | - | n/a: %s |\n", row.Scenario, row.Skipped)
			continue
		}
		result := "ok"
		if row.Fault != "" {
			result += " (" + row.Fault + ")"
		}
		var why []string
		if row.Err != nil {
			why = append(why, row.Err.Error())
		}
		if len(row.Lost) > 0 {
			why = append(why, "lost e.g. "+strings.Join(row.Lost[:min(3, len(row.Lost))], ", "))
		}
		if len(row.Reordered) > 0 {
			why = append(why, "reordered e.g. "+strings.Join(row.Reordered[:min(3, len(row.Reordered))], ", "))
		}
		if len(row.Rekeyed) > 0 {
			why = append(why, "delivered again under another idempotency key e.g. "+strings.Join(row.Rekeyed[:min(3, len(row.Rekeyed))], ", "))
		}
		if len(row.Corrupt) > 0 {
			why = append(why, "corrupt e.g. "+strings.Join(row.Corrupt[:min(3, len(row.Corrupt))], ", "))
		}
		if row.Duplicates > 0 && row.Tolerated == "" {
			why = append(why, fmt.Sprintf("%d duplicate effects", row.Duplicates))
		}
		switch {
		case len(why) > 0:
			result = "FAIL: " + strings.Join(why, "; ")
		case row.Duplicates > 0:
			result = fmt.Sprintf("WARN: %d duplicate effects, expected here: %s", row.Duplicates, row.Tolerated)
		}
		fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %.1f | %s |\n", row.Scenario, row.Changes, len(row.Lost), row.Duplicates,
			len(row.Reordered), row.CatchUp.Seconds(), strings.ReplaceAll(result, "|", "/"))
	}
	if len(r.Rejected) > 0 {
		fmt.Fprintf(w, "\n%d requests refused (bad signature or body), e.g. %s\n", len(r.Rejected), r.Rejected[0])
	}
	if r.Cleanup != nil {
		fmt.Fprintf(w, "\ncleanup of %s failed: %v\n", r.Scratch, r.Cleanup)
	}
}
