package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/millrace/millrace/stores"

	"github.com/spf13/cobra"

	"github.com/millrace/millrace/router"
)

// DefaultAdminTokenEnv is the variable the dlq commands read the admin
// token from, unless --token-env names another.
const DefaultAdminTokenEnv = "MILLRACE_ADMIN_TOKEN"

// dlqClient talks to the admin API of a running millrace.
type dlqClient struct {
	addr, tokenEnv string
	timeout        time.Duration
	// name names the client in its errors; "" is "dlq".
	name string
}

func usageError(format string, args ...any) error {
	return &exitError{code: ExitInvalid, err: fmt.Errorf(format, args...)}
}

func dlqCmd(stdout, stderr io.Writer) *cobra.Command {
	c := &dlqClient{}
	cmd := &cobra.Command{
		Use:   "dlq list|show|replay|skip|purge|export",
		Short: "Inspect, replay and purge the dead letters of a running millrace (admin API /v1/dlq)",
		Long: `The dlq commands are clients of the admin API of a running millrace
(http.admin_token_env must be set in its config). The bearer token is read
from $` + DefaultAdminTokenEnv + `, or from the variable --token-env names.

Exit codes: 0 done, 1 failed, 2 bad usage.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError("dlq: missing subcommand (list, show, replay, skip, purge or export)")
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError("%v", err) })
	f := cmd.PersistentFlags()
	f.StringVar(&c.addr, "addr", "127.0.0.1:8080", "address of the running millrace")
	f.StringVar(&c.tokenEnv, "token-env", DefaultAdminTokenEnv, "variable holding the admin token")
	f.DurationVar(&c.timeout, "timeout", time.Minute, "request timeout")
	cmd.AddCommand(dlqListCmd(c, stdout), dlqShowCmd(c, stdout), dlqReplayCmd(c, stdout), dlqSkipCmd(c, stdout), dlqPurgeCmd(c, stdout),
		dlqExportCmd(c, stdout, stderr))
	return cmd
}

func dlqListCmd(c *dlqClient, stdout io.Writer) *cobra.Command {
	var (
		observer, since, entity string
		limit                   int
	)
	cmd := &cobra.Command{
		Use:   "list [--observer NAME] [--entity KEY] [--since 1h|RFC3339] [--limit N]",
		Short: "List dead letters, oldest first",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return usageError("--limit must not be negative")
			}
			q := filterQuery(observer, since)
			if entity != "" {
				q.Set("entity", entity)
			}
			if limit > 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			var out router.DeadLetterList
			if _, err := c.do(cmd.Context(), http.MethodGet, "/v1/dlq?"+q.Encode(), nil, &out); err != nil {
				return err
			}
			return printDeadLetters(stdout, out)
		},
	}
	cmd.Flags().StringVar(&observer, "observer", "", "only this observer's entries")
	cmd.Flags().StringVar(&entity, "entity", "", "only this entity's entries (source/entity_type/entity_id, as the parked entries show it)")
	cmd.Flags().StringVar(&since, "since", "", "only entries that failed last at or after this time (RFC 3339) or this long ago (1h)")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many entries (default 100)")
	return cmd
}

// filterQuery is the query of the entries of observer that failed last
// since since, as list and export send it; empty values are left out.
func filterQuery(observer, since string) url.Values {
	q := url.Values{}
	if observer != "" {
		q.Set("observer", observer)
	}
	if since != "" {
		q.Set("since", since)
	}
	return q
}

func printDeadLetters(w io.Writer, l router.DeadLetterList) error {
	if l.Volatile {
		// Said first: whoever lists them may be about to restart.
		if _, err := fmt.Fprintf(w, "note: the %s topology keeps dead letters in the process's memory: they vanish when it stops\n", l.Topology); err != nil {
			return err
		}
	}
	if len(l.Entries) == 0 {
		_, err := fmt.Fprintf(w, "no dead letters match (%d in the store)\n", l.Total)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tOBSERVER\tACTION\tREASON\tATTEMPTS\tLAST FAILURE\tEVENT\tERROR")
	for _, e := range l.Entries {
		reason := e.Reason
		if e.Parked {
			reason += " [parked " + e.Key + "]"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", e.ID, dash(e.Observer), dash(e.Action), reason, e.Attempts,
			e.LastFailure.Local().Format(time.DateTime), dash(e.EventID), oneLine(e.Error, 80))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d shown, %d in the store\n", len(l.Entries), l.Total)
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a table row on one line and within n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

func dlqShowCmd(c *dlqClient, stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show one dead letter as JSON, its payload included",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError("dlq show: want exactly one ID")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var dl stores.DeadLetter
			if _, err := c.do(cmd.Context(), http.MethodGet, "/v1/dlq/"+url.PathEscape(args[0]), nil, &dl); err != nil {
				return err
			}
			b, err := json.MarshalIndent(showView(dl), "", "  ")
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(stdout, "%s\n", b)
			return err
		},
	}
}

// shownDeadLetter is a dead letter as dlq show prints it: the payload as
// JSON when it is JSON, base64 otherwise, and which of the two.
type shownDeadLetter struct {
	stores.DeadLetter
	PayloadEncoding string `json:"payload_encoding"`
	// Payload shadows the entry's bytes with their JSON rendering.
	Payload json.RawMessage `json:"payload"`
}

func showView(dl stores.DeadLetter) shownDeadLetter {
	v := shownDeadLetter{DeadLetter: dl}
	if len(bytes.TrimSpace(dl.Payload)) > 0 && json.Valid(dl.Payload) {
		v.PayloadEncoding, v.Payload = "json", dl.Payload
	} else {
		b, _ := json.Marshal(base64.StdEncoding.EncodeToString(dl.Payload))
		v.PayloadEncoding, v.Payload = "base64", b
	}
	return v
}

func dlqReplayCmd(c *dlqClient, stdout io.Writer) *cobra.Command {
	var (
		all, dryRun, allActions bool
		observer, entity        string
		wait                    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "replay ID... | --all [--observer NAME] [--all-actions] [--dry-run] | --entity KEY [--observer NAME] [--wait 1m]",
		Short: "Publish dead letters again through the normal path, then delete them",
		Long: `replay publishes each entry's event again on its topic, for the observer
that failed only. The observer's actions that had succeeded before the
entry was written (its "succeeded" list) are not run again, however long
ago that was; --all-actions runs every action again. Dedup and the result
cache apply as to any delivery. An entry is deleted once its event is
back on the bus. With --all, the entries in the store when the replay
starts are replayed (those of one observer with --observer); --dry-run
lists them and changes nothing.

With --entity, the parked groups of that entity (observers with
on_failure = "park"; of one observer with --observer) are replayed in
order, head first, each once, by the worker that runs the entity; the
entity runs again once its whole group succeeded. If an event fails
again, it stays the head and the group stays parked. The request returns
when the replay was handed to that worker; --wait waits, up to the
duration given, until the groups are gone.`,
		Args: func(_ *cobra.Command, args []string) error {
			switch {
			case entity != "" && (all || len(args) > 0):
				return usageError("dlq replay: give IDs, --all or --entity, one of them")
			case entity != "":
				if allActions {
					return usageError("dlq replay: --all-actions does not go with --entity")
				}
				return nil
			case wait != 0:
				return usageError("dlq replay: --wait goes with --entity")
			case all && len(args) > 0:
				return usageError("dlq replay: give IDs or --all, not both")
			case !all && len(args) == 0:
				return usageError("dlq replay: give IDs or --all")
			case !all && observer != "":
				return usageError("dlq replay: --observer goes with --all or --entity")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, ids []string) error {
			if entity != "" {
				return c.release(cmd.Context(), stdout, "/v1/dlq/replay", router.ReplayRequest{Entity: entity, Observer: observer, DryRun: dryRun}, wait)
			}
			var res router.ReplayResponse
			status, err := c.do(cmd.Context(), http.MethodPost, "/v1/dlq/replay",
				router.ReplayRequest{IDs: ids, All: all, Observer: observer, AllActions: allActions, DryRun: dryRun}, &res)
			if err != nil && (status == 0 || len(res.Failed) == 0) {
				return err
			}
			verb := "replayed"
			if res.DryRun {
				verb = "would replay"
			}
			printReplay(stdout, fmt.Sprintf("%s %d", verb, res.Replayed), res)
			if err != nil {
				return &exitError{code: ExitFailure, err: err}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "replay every entry (of --observer, when given)")
	cmd.Flags().StringVar(&observer, "observer", "", "with --all or --entity, only this observer's entries")
	cmd.Flags().StringVar(&entity, "entity", "", "replay this entity's parked groups in order (source/entity_type/entity_id, as dlq list shows it)")
	cmd.Flags().DurationVar(&wait, "wait", 0, "with --entity, wait up to this long for the groups to be replayed")
	cmd.Flags().BoolVar(&allActions, "all-actions", false, "run every action of the observer again, those that had succeeded too")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be replayed; change nothing")
	return cmd
}

func dlqSkipCmd(c *dlqClient, stdout io.Writer) *cobra.Command {
	var (
		observer, entity string
		dryRun           bool
		wait             time.Duration
	)
	cmd := &cobra.Command{
		Use:   "skip --entity KEY [--observer NAME] [--wait 1m] [--dry-run]",
		Short: "Take the failed head out of an entity's parked groups and replay the rest in order",
		Long: `skip is for a parked entity whose head will never succeed: the head
leaves its group and stays in the store as an ordinary dead letter (a new
entry, which dlq list, show, replay and purge handle like any other), and
the rest of the group is replayed in order as dlq replay --entity does.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 || entity == "" {
				return usageError("dlq skip: give --entity and no arguments")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return c.release(cmd.Context(), stdout, "/v1/dlq/skip", router.ReplayRequest{Entity: entity, Observer: observer, DryRun: dryRun}, wait)
		},
	}
	cmd.Flags().StringVar(&entity, "entity", "", "the parked entity (source/entity_type/entity_id, as dlq list shows it)")
	cmd.Flags().StringVar(&observer, "observer", "", "only this observer's group")
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the groups to be replayed")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list the groups' entries; change nothing")
	return cmd
}

// printReplay prints a replay's answer: head, then the ids, then one
// line per failure.
func printReplay(w io.Writer, head string, res router.ReplayResponse) {
	fmt.Fprintln(w, head)
	for _, id := range res.IDs {
		fmt.Fprintf(w, "  %s\n", id)
	}
	for _, f := range res.Failed {
		fmt.Fprintf(w, "failed %s: %s\n", f.ID, f.Error)
	}
}

// release asks for the replay (or skip) of an entity's parked groups
// and, with wait, polls until none is left.
func (c *dlqClient) release(ctx context.Context, stdout io.Writer, path string, rr router.ReplayRequest, wait time.Duration) error {
	var res router.ReplayResponse
	status, err := c.do(ctx, http.MethodPost, path, rr, &res)
	if err != nil && (status == 0 || status == http.StatusNotFound || len(res.Failed) == 0) {
		return err
	}
	verb := "requested the replay of"
	if res.DryRun {
		verb = "would replay"
	}
	printReplay(stdout, fmt.Sprintf("%s %d parked group(s), %d event(s), in order:", verb, res.Groups, res.Replayed), res)
	if err != nil {
		return &exitError{code: ExitFailure, err: err}
	}
	if wait <= 0 || res.DryRun {
		return nil
	}
	q := url.Values{"entity": {rr.Entity}, "parked": {"true"}}
	if rr.Observer != "" {
		q.Set("observer", rr.Observer)
	}
	deadline := time.Now().Add(wait)
	for {
		var l router.DeadLetterList
		if _, err := c.do(ctx, http.MethodGet, "/v1/dlq?"+q.Encode(), nil, &l); err != nil {
			return err
		}
		if len(l.Entries) == 0 {
			_, err := fmt.Fprintf(stdout, "entity %s released: its parked groups were replayed\n", rr.Entity)
			return err
		}
		if time.Now().After(deadline) {
			return &exitError{code: ExitFailure, err: fmt.Errorf("dlq: entity %s still has %d parked event(s) after %s; its head: %s",
				rr.Entity, len(l.Entries), wait, oneLine(l.Entries[0].Error, 200))}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func dlqPurgeCmd(c *dlqClient, stdout io.Writer) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "purge --yes",
		Short: "Delete every dead letter",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !yes {
				return usageError("dlq purge deletes every dead letter for good; add --yes")
			}
			var res router.PurgeResponse
			if _, err := c.do(cmd.Context(), http.MethodDelete, "/v1/dlq", nil, &res); err != nil {
				return err
			}
			_, err := fmt.Fprintf(stdout, "purged %d\n", res.Purged)
			return err
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm the purge")
	return cmd
}

func dlqExportCmd(c *dlqClient, stdout, stderr io.Writer) *cobra.Command {
	var out, observer, since string
	cmd := &cobra.Command{
		Use:   "export --out FILE.jsonl [--observer NAME] [--since 1h|RFC3339]",
		Short: "Write the events of the dead letters to a file, one envelope per line, for millrace try",
		Long: `export writes the event of each dead letter, oldest first, one JSON
envelope per line (--out - writes to stdout): the input of millrace try.
An event dead-lettered for several observers is written once. Entries
whose payload is not an event (reason "undecodable") are skipped, and
stderr says how many. The store is not changed.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError("dlq export: --out is required (- for stdout)")
			}
			q := filterQuery(observer, since)
			ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
			defer cancel()
			resp, err := c.send(ctx, http.MethodGet, "/v1/dlq/export?"+q.Encode(), nil, nil)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if err := writeOut(out, stdout, resp.Body); err != nil {
				return err
			}
			h := resp.Header
			fmt.Fprintf(stderr, "exported %s event(s)", h.Get(router.RecordEventsHeader))
			if n := h.Get(router.ExportUndecodableHeader); n != "" && n != "0" {
				fmt.Fprintf(stderr, "; skipped %s dead letter(s) whose payload is not an event", n)
			}
			if n := h.Get(router.ExportRepeatedHeader); n != "" && n != "0" {
				fmt.Fprintf(stderr, "; skipped %s dead letter(s) of an event already written", n)
			}
			fmt.Fprintln(stderr)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write the envelopes to (- for stdout)")
	cmd.Flags().StringVar(&observer, "observer", "", "only this observer's entries")
	cmd.Flags().StringVar(&since, "since", "", "only entries that failed last at or after this time (RFC 3339) or this long ago (1h)")
	return cmd
}

// writeOut copies r to the file path names, or to stdout for "-".
func writeOut(path string, stdout io.Writer, r io.Reader) error {
	if path == "-" {
		_, err := io.Copy(stdout, r)
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return usageError("--out: %v", err)
	}
	if _, err := io.Copy(f, r); err != nil {
		_ = f.Close()
		return fmt.Errorf("--out: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	return nil
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError("%s: unexpected argument %q", cmd.CommandPath(), args[0])
	}
	return nil
}

// do sends one request and decodes the JSON answer into out, also when
// the status is an error and the body still fits out (replay). It
// returns the status (0 when no answer came) and an error for any status
// from 300 up.
func (c *dlqClient) do(ctx context.Context, method, path string, in, out any) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.send(ctx, method, path, in, out)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		return status, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return 0, fmt.Errorf("%s: read answer: %w", c.what(), err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s: answer: %w", c.what(), err)
		}
	}
	return resp.StatusCode, nil
}

// what names the client in its errors: "dlq", or the command's name.
func (c *dlqClient) what() string {
	if c.name == "" {
		return "dlq"
	}
	return c.name
}

// send sends one request. It returns the answer, its body to be read and
// closed, when the status is below 300; for a higher status it reads the
// body, decodes it into out when it fits (out may be nil) and returns
// the answer (body closed) with an error that says what went wrong.
func (c *dlqClient) send(ctx context.Context, method, path string, in, out any) (*http.Response, error) {
	token := os.Getenv(c.tokenEnv)
	if token == "" {
		return nil, usageError("no admin token: set %s (or name another variable with --token-env)", c.tokenEnv)
	}
	base := strings.TrimSuffix(c.addr, "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return nil, usageError("%s: %v", c.what(), err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.what(), err)
	}
	if resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return resp, fmt.Errorf("%s: %s: read answer: %w", c.what(), resp.Status, err)
	}
	var e struct {
		Error string `json:"error"`
	}
	if out != nil {
		_ = json.Unmarshal(raw, out)
	}
	msg := strings.TrimSpace(string(raw))
	if json.Unmarshal(raw, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	switch resp.StatusCode {
	case http.StatusNotFound:
		if strings.HasPrefix(msg, "404 page not found") {
			msg = "no admin API at " + base + " (is http.admin_token_env set in its config?)"
		}
	case http.StatusUnauthorized:
		msg += " (check $" + c.tokenEnv + ")"
	}
	return resp, errors.New(c.what() + ": " + resp.Status + ": " + msg)
}
