package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/millrace/millrace/bus/backfill"
	"github.com/millrace/millrace/bus/capture"
	"github.com/millrace/millrace/config"
)

func backfillCmd(o Options, stdout io.Writer, logger func(*config.Config) *slog.Logger) *cobra.Command {
	var (
		path, source, table, where, observer, rateFlag string
		page                                           int
		restart                                        bool
	)
	cmd := &cobra.Command{
		Use:   "backfill -c FILE [--source NAME] --table T [--where SQL] [--observer NAME] [--rate N/s] [--page N] [--restart]",
		Short: "Emit the rows a table holds already as READ events, beside live capture; resumes after a stop",
		Long: `backfill pages a watched table by primary key and emits one READ event
per row, through the source's capture, while live capture goes on. Each
page is read FOR SHARE and emitted in one transaction, so a change made
to a row during the backfill always reaches the observers after its READ
event. The cursor is stored in the source's capture schema: run the same
command again after a stop and it resumes; a finished backfill is only
reported, unless --restart.

--where is a SQL condition on the table's columns, run as the config's
database user: it is trusted input. --observer sends the events to that
observer only. Observers see READ events when their event key is "READ"
or "*".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			invalid := func(format string, args ...any) error {
				return &exitError{code: ExitInvalid, err: fmt.Errorf(format, args...)}
			}
			cfg, err := load(o, path)
			if err != nil {
				return err
			}
			if table == "" {
				return invalid("--table is required")
			}
			if page <= 0 {
				return invalid("--page %d: must be at least 1", page)
			}
			var perSecond float64
			if rateFlag != "" {
				if perSecond, err = config.ParseRate(rateFlag); err != nil {
					return invalid("--rate: %v", err)
				}
			}
			i, err := pickSource(cfg, source)
			if err != nil {
				return &exitError{code: ExitInvalid, err: err}
			}
			s := cfg.Sources[i]
			if observer != "" {
				if _, ok := cfg.Observers[observer]; !ok {
					return invalid("--observer %q: no observer of that name (observers: %s)", observer, listOr(cfg.ObserverNames(), "none"))
				}
			}
			mode, err := captureMode(s)
			if err != nil {
				return invalid("%s (%s): %v", config.Index("sources", i), s.Name, err)
			}
			emitter, err := backfill.NewEmitter(mode, s.Schema, s.PublicationName())
			if err != nil {
				return err
			}
			url, err := config.Secret(s.PostgresURL, s.PostgresURLEnv)
			if err != nil {
				return invalid("%s: %v", config.URLKey(config.Index("sources", i), "postgres_url", s.PostgresURLEnv), err)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			pool, err := pgxpool.New(ctx, url)
			if err != nil {
				return fmt.Errorf("source %s: connect: %w", s.Name, err)
			}
			defer pool.Close()
			pingCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err = pool.Ping(pingCtx)
			cancel()
			if err != nil {
				return fmt.Errorf("source %s: connect: %w", s.Name, err)
			}
			log := logger(cfg).With("component", "backfill")
			res, err := backfill.Run(ctx, pool, backfill.Config{
				Source: s.Name, Schema: s.Schema, Table: table, Entities: s.Entities, Watched: s.Tables,
				Filter: where, Observer: observer, Page: page, Rate: perSecond, Restart: restart,
				Emitter: emitter, CheckTrigger: mode == backfill.ModeTrigger, Logger: log,
			})
			switch {
			case errors.Is(err, backfill.ErrInvalid):
				return invalid("%s (%s): %v", config.Index("sources", i), s.Name, err)
			case err != nil && ctx.Err() != nil:
				log.Warn("backfill: stopped; run the same command again to resume", "rows", res.Rows, "cursor", string(res.Cursor))
				return &exitError{code: ExitFailure, err: fmt.Errorf("source %s: %s: backfill stopped after %d rows (cursor %s); run the same command again to resume",
					s.Name, res.Table, res.Rows, cursorText(res.Cursor))}
			case err != nil:
				return fmt.Errorf("source %s: %w", s.Name, err)
			case res.AlreadyFinished:
				fmt.Fprintf(stdout, "%s: %s: the backfill finished at %s with %d rows; --restart runs it again\n",
					s.Name, res.Table, res.FinishedAt.UTC().Format(time.RFC3339), res.Rows)
				return nil
			}
			resumed := ""
			if res.Resumed {
				resumed = fmt.Sprintf(", resumed after %d", res.Rows-res.Emitted)
			}
			fmt.Fprintf(stdout, "%s: %s: %d rows emitted as READ events in %s (%d in all%s; run %s)\n",
				s.Name, res.Table, res.Emitted, res.Took.Round(time.Millisecond), res.Rows, resumed, res.RunID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&path, "config", "c", "", "config file (TOML)")
	f.StringVar(&source, "source", "", "the source holding the table (default: the only source)")
	f.StringVar(&table, "table", "", `the table, "schema.table"; one of the source's tables`)
	f.StringVar(&where, "where", "", "SQL condition on the table's columns (trusted: it runs as the config's database user)")
	f.StringVar(&observer, "observer", "", "send the events to this observer only")
	f.StringVar(&rateFlag, "rate", "", `at most this many rows per second, minute or hour, like "500/s" (default: no bound)`)
	f.IntVar(&page, "page", backfill.DefaultPage, "rows per transaction: writers to those rows wait for it")
	f.BoolVar(&restart, "restart", false, "start over a backfill that finished or stopped, instead of resuming or reporting it")
	return cmd
}

// pickSource returns the index of the source named name, or of the only
// source when name is empty.
func pickSource(cfg *config.Config, name string) (int, error) {
	var names []string
	for i, s := range cfg.Sources {
		if s.Name == name || (name == "" && len(cfg.Sources) == 1) {
			return i, nil
		}
		names = append(names, s.Name)
	}
	switch {
	case len(names) == 0:
		return 0, errors.New("the config has no [[sources]]")
	case name == "":
		return 0, fmt.Errorf("--source is required: the config has several sources (%s)", strings.Join(names, ", "))
	}
	return 0, fmt.Errorf("no source named %q (sources: %s)", name, strings.Join(names, ", "))
}

// captureMode is the backfill mode of a source's capture.
func captureMode(s config.Source) (string, error) {
	if s.Mode == capture.ModeFraiseQL {
		return "", errors.New("mode fraiseql reads FraiseQL's change log, which millrace does not write to: backfill needs millrace's capture")
	}
	if s.Capture == config.CaptureWAL {
		return backfill.ModeWAL, nil
	}
	return backfill.ModeTrigger, nil
}

func listOr(names []string, none string) string {
	if len(names) == 0 {
		return none
	}
	return strings.Join(names, ", ")
}

func cursorText(c []byte) string {
	if c == nil {
		return "none: no page committed"
	}
	return string(c)
}
