package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/millrace/millrace/bus/capture"
	"github.com/millrace/millrace/bus/wal"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
)

// captureFlags are the flags of migrate, watch and unwatch.
type captureFlags struct {
	path, source string
	timeout      time.Duration
}

func (f *captureFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.path, "config", "c", "", "config file (TOML)")
	cmd.Flags().StringVar(&f.source, "source", "", "only this source (default: every source)")
	cmd.Flags().DurationVar(&f.timeout, "timeout", time.Minute, "time allowed per source")
}

// sources loads the config and returns the sources the flags select.
func (f *captureFlags) sources(o Options) ([]config.Source, error) {
	cfg, err := load(o, f.path)
	if err != nil {
		return nil, err
	}
	if len(cfg.Sources) == 0 {
		return nil, &exitError{code: ExitInvalid, err: errors.New("the config has no [[sources]]")}
	}
	if f.source == "" {
		return cfg.Sources, nil
	}
	var names []string
	for _, s := range cfg.Sources {
		if s.Name == f.source {
			return []config.Source{s}, nil
		}
		names = append(names, s.Name)
	}
	return nil, &exitError{code: ExitInvalid, err: fmt.Errorf("no source named %q (sources: %s)", f.source, strings.Join(names, ", "))}
}

// eachSource connects to every selected source in turn and runs fn.
func (f *captureFlags) eachSource(ctx context.Context, o Options, fn func(ctx context.Context, pool *pgxpool.Pool, s config.Source) error) error {
	srcs, err := f.sources(o)
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range srcs {
		if err := f.withPool(ctx, s, fn); err != nil {
			errs = append(errs, fmt.Errorf("source %s: %w", s.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (f *captureFlags) withPool(ctx context.Context, s config.Source, fn func(ctx context.Context, pool *pgxpool.Pool, s config.Source) error) error {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	url, err := config.Secret(s.PostgresURL, s.PostgresURLEnv)
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	return fn(ctx, pool, s)
}

func migrateCmd(o Options, stdout io.Writer) *cobra.Command {
	var f captureFlags
	cmd := &cobra.Command{
		Use:   "migrate -c FILE [--source NAME]",
		Short: "Create or update the capture schema (change log, checkpoints, trigger functions) of each source",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.eachSource(cmd.Context(), o, func(ctx context.Context, pool *pgxpool.Pool, s config.Source) error {
				if s.Capture == config.CaptureWAL {
					if err := topologies.SetupWAL(ctx, pool, s, s.Tables); err != nil {
						return err
					}
					fmt.Fprintf(stdout, "%s: schema %s, publication %s and slot %s are up to date\n", s.Name, s.Schema, s.PublicationName(), s.SlotName())
					return nil
				}
				if err := capture.Migrate(ctx, pool, s.Schema); err != nil {
					return err
				}
				fmt.Fprintf(stdout, "%s: schema %s is up to date\n", s.Name, s.Schema)
				return nil
			})
		},
	}
	f.register(cmd)
	return cmd
}

func watchCmd(o Options, stdout io.Writer) *cobra.Command {
	var f captureFlags
	cmd := &cobra.Command{
		Use:   "watch -c FILE [--source NAME] [TABLE...]",
		Short: "Install the capture triggers on tables, or publish them for capture = \"wal\" (default: each source's tables); idempotent",
		Long: `watch migrates the source's capture schema, then installs the capture
triggers on each table ("schema.table"), with the entity types of the
source's entities map. It also turns the LISTEN/NOTIFY wake-ups on or off
as the source's notify key says. Running it again updates the triggers.

With capture = "wal" it adds the tables to the source's publication
(created if missing), sets REPLICA IDENTITY FULL unless replica_identity =
"keep", and creates the replication slot (pgoutput).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return f.eachSource(cmd.Context(), o, func(ctx context.Context, pool *pgxpool.Pool, s config.Source) error {
				if s.Mode == capture.ModeFraiseQL {
					if len(args) > 0 {
						return errors.New("mode fraiseql reads an existing change log; there is nothing to watch")
					}
					fmt.Fprintf(stdout, "%s: mode fraiseql, nothing to watch\n", s.Name)
					return nil
				}
				tables := args
				if len(tables) == 0 {
					tables = s.Tables
				}
				if s.Capture == config.CaptureWAL {
					if err := topologies.SetupWAL(ctx, pool, s, tables); err != nil {
						return err
					}
					fmt.Fprintf(stdout, "%s: publishing %s (publication %s, slot %s)\n", s.Name, strings.Join(tables, ", "), s.PublicationName(), s.SlotName())
					return nil
				}
				if err := capture.Watch(ctx, pool, s.Schema, tables, s.Entities); err != nil {
					return err
				}
				if err := capture.SetNotify(ctx, pool, s.Schema, s.Notify); err != nil {
					return err
				}
				notify := "off"
				if s.Notify {
					notify = "on"
				}
				if len(tables) == 0 {
					fmt.Fprintf(stdout, "%s: no tables to watch (notify %s)\n", s.Name, notify)
					return nil
				}
				fmt.Fprintf(stdout, "%s: watching %s (notify %s)\n", s.Name, strings.Join(tables, ", "), notify)
				return nil
			})
		},
	}
	f.register(cmd)
	return cmd
}

func unwatchCmd(o Options, stdout io.Writer) *cobra.Command {
	var f captureFlags
	cmd := &cobra.Command{
		Use:   "unwatch -c FILE [--source NAME] [TABLE...]",
		Short: "Remove the capture triggers from tables, or unpublish them for capture = \"wal\" (then drop the slot and publication once empty); idempotent",
		RunE: func(cmd *cobra.Command, args []string) error {
			return f.eachSource(cmd.Context(), o, func(ctx context.Context, pool *pgxpool.Pool, s config.Source) error {
				tables := args
				if len(tables) == 0 {
					tables = s.Tables
				}
				if s.Capture == config.CaptureWAL {
					if err := wal.Unpublish(ctx, pool, s.SlotName(), s.PublicationName(), tables); err != nil {
						return err
					}
					fmt.Fprintf(stdout, "%s: no longer publishing %s (publication and slot dropped once empty)\n", s.Name, strings.Join(tables, ", "))
					return nil
				}
				if s.Mode == capture.ModeFraiseQL || len(tables) == 0 {
					fmt.Fprintf(stdout, "%s: nothing to unwatch\n", s.Name)
					return nil
				}
				if err := capture.Unwatch(ctx, pool, s.Schema, tables); err != nil {
					return err
				}
				fmt.Fprintf(stdout, "%s: no longer watching %s\n", s.Name, strings.Join(tables, ", "))
				return nil
			})
		},
	}
	f.register(cmd)
	return cmd
}
