package cli

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/millrace/millrace/try"
)

func tryCmd(o Options, stdout io.Writer) *cobra.Command {
	var path, against string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "try -c NEW.toml [--against OLD.toml] EVENTS.jsonl [--json]",
		Short: "Run recorded events through a config without sending anything, and compare with another",
		Long: `Run recorded events (one JSON envelope per line; "-" reads stdin) through
the observers of a config: matching, conditions and templates as millrace
runs them, each action rendered instead of executed. Nothing is sent:
no request, message, mail, SQL call or cache deletion.

Without --against it lists what each event would do. With --against it
shows, event by event, the effects the new config adds, removes or
changes compared with the old one.

Exit codes: 0; 1 when the new config errors (a condition or template
fails) on an event the old one handled without error, or, without
--against, on any event; 2 when a config is invalid or its actions
cannot be built (a *_env variable not set, say).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			next, err := buildTrySet(cmd, o, path)
			if err != nil {
				return err
			}
			defer next.Close()
			var old *try.Set
			if against != "" {
				if old, err = buildTrySet(cmd, o, against); err != nil {
					return err
				}
				defer old.Close()
			}
			in := io.Reader(os.Stdin)
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return &exitError{code: ExitInvalid, err: err}
				}
				defer f.Close()
				in = f
			}
			rep, err := try.Compare(ctx, old, next, in)
			if err != nil {
				return &exitError{code: ExitFailure, err: fmt.Errorf("%s: %w", args[0], err)}
			}
			if asJSON {
				err = rep.WriteJSON(stdout)
			} else {
				err = rep.WriteText(stdout)
			}
			if err != nil {
				return err
			}
			if rep.Regressions > 0 {
				return &exitError{code: ExitFailure, err: fmt.Errorf("the new config errors on %d event(s)", rep.Regressions)}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "the config to try (TOML)")
	cmd.Flags().StringVar(&against, "against", "", "the config to compare with, usually the one running now")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func buildTrySet(cmd *cobra.Command, o Options, path string) (*try.Set, error) {
	cfg, err := load(o, path)
	if err != nil {
		return nil, err
	}
	s, err := try.Build(cmd.Context(), cfg, o.Actions)
	if err != nil {
		return nil, &exitError{code: ExitInvalid, err: fmt.Errorf("%s: %w", path, err)}
	}
	return s, nil
}
