package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/millrace/millrace/verify"
)

func verifyCmd(o Options, stdout, stderr io.Writer) *cobra.Command {
	var (
		path, out string
		short     bool
		changes   int
		entities  int
		outage    time.Duration
		scenarios []string
	)
	cmd := &cobra.Command{
		Use:   "verify -c FILE [--short] [--changes N] [--entities E] [--outage D] [--scenarios a,b] [--out FILE]",
		Short: "Check delivery end to end against the config's own services, with faults injected (docs/verify.md)",
		Long: `verify derives from the config a scratch config: the same topology and
services, with a scratch schema and table in each source's database (or
HTTP ingest when there is no [[sources]]), scratch stream, subject, key
prefix and group names, and one observer: a webhook to verify's own
receiver. It starts workers of this binary on it (two where the topology
allows several), writes changes with a per-entity sequence and a rolling
checksum, and runs the scenarios on fresh entities while the same workers
run:

  baseline           no fault
  kill-worker        SIGKILL of a worker mid-flow, restarted after 2 s
  endpoint-outage    the endpoint answers 503 for --outage
  capture-killed     pg_terminate_backend of the capture connection
  dedup-unreachable  the dedup store cut off for --outage (through a TCP
                     proxy of verify's own; n/a where the ledger is in
                     memory)

It prints a Markdown table of lost changes, duplicate effects, reordered
first deliveries and catch-up seconds per scenario, and removes what it
created, also on failure and on Ctrl-C.

Exit codes: 0; 1 when a change was lost, delivered twice or out of order,
or a scenario could not run; 2 when the config is invalid. Duplicates in
kill-worker and dedup-unreachable are a warning, as long as each came
under its first delivery's idempotency key: a SIGKILL can land between
an effect and its record in the dedup ledger, or take an in-memory
ledger with it, and an unreachable ledger fails open.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := load(o, path)
			if err != nil {
				return err
			}
			opts := verify.Full()
			if short {
				opts = verify.Short()
			}
			f := cmd.Flags()
			if f.Changed("changes") {
				opts.Changes = changes
			}
			if f.Changed("entities") {
				opts.Entities = entities
			}
			if f.Changed("outage") {
				opts.Outage = outage
			}
			opts.Scenarios = scenarios
			opts.Log = stderr
			if opts.Binary, err = os.Executable(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, err := verify.Run(ctx, path, cfg, opts)
			var ce *verify.ConfigError
			if errors.As(err, &ce) {
				return &exitError{code: ExitInvalid, err: fmt.Errorf("%s: %w", path, err)}
			}
			if rep != nil {
				var b bytes.Buffer
				rep.Markdown(&b)
				_, _ = stdout.Write(b.Bytes())
				if out != "" {
					if werr := os.WriteFile(out, b.Bytes(), 0o644); werr != nil {
						return &exitError{code: ExitFailure, err: fmt.Errorf("--out: %w", werr)}
					}
				}
			}
			if err != nil {
				return &exitError{code: ExitFailure, err: fmt.Errorf("verify: %w", err)}
			}
			if rep.Failed() {
				return &exitError{code: ExitFailure, err: errors.New("verify: a change was lost, duplicated or reordered, or a scenario failed")}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&path, "config", "c", "", "config file (TOML) whose services to check")
	f.BoolVar(&short, "short", false, "the short form: 1000 changes on 10 entities per scenario, 3s outage")
	f.IntVar(&changes, "changes", verify.Full().Changes, "changes per scenario")
	f.IntVar(&entities, "entities", verify.Full().Entities, "entities per scenario (each gets changes/entities changes, in sequence)")
	f.DurationVar(&outage, "outage", verify.Full().Outage, "how long the endpoint answers 503, and the dedup store is cut off")
	f.StringSliceVar(&scenarios, "scenarios", nil, "scenarios to run (default: all): baseline, kill-worker, endpoint-outage, capture-killed, dedup-unreachable")
	f.StringVar(&out, "out", "", "also write the table to this file")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}
