// Command millrace-bench is millrace's benchmark suite (`make bench`,
// docs/performance.md). It is a binary of its own so that millrace,
// the product, links neither the harness nor its chart drawing.
//
// It runs millrace in its process on each topology, with the registries
// of cli.Defaults() (every built-in action type and topology), beside
// the client-library ceiling, and writes results.json, RESULTS.md and
// chart.png to --out. Exit codes are millrace's: 0, 1 when the suite
// failed, 2 for bad flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/millrace/millrace/cmd/millrace/cli"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// exitError carries an exit code out of the command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// run runs the suite with args and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := benchCmd(stdout, stderr)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return cli.ExitOK
	}
	if ee := (*exitError)(nil); errors.As(err, &ee) {
		fmt.Fprintln(stderr, ee.err)
		return ee.code
	}
	fmt.Fprintln(stderr, "error:", err)
	return cli.ExitInvalid // cobra's own errors: flags and arguments
}

func benchCmd(stdout, stderr io.Writer) *cobra.Command {
	var (
		topos      []string
		scens      []string
		opts       bench.Options
		cpuProfile bool
		logLevel   string
	)
	cmd := &cobra.Command{
		Use:   "millrace-bench [--topologies embedded,nats] [-n EVENTS] [--rate N] [--out DIR]",
		Short: "Measure millrace's throughput, latency, CPU and memory per topology beside the client-library ceiling",
		Long: `millrace-bench starts millrace in this process on each topology and pushes
change events through the whole pipeline (capture or publish, bus, dedup,
result cache, one observer, one action), then runs the same
publish-then-consume job straight on the client library: the ceiling. It
writes results.json, RESULTS.md and chart.png to --out. Topologies not
registered in this build are reported as not available; their ceilings
are measured all the same.

Services: PostgreSQL, Redis and NATS at their local default ports, or at
$` + bench.PostgresURLEnv + `, $` + bench.RedisURLEnv + ` and $` + bench.NATSURLEnv + `.
docs/performance.md explains every figure.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, t := range topos {
				for _, name := range strings.Split(t, ",") {
					if name = strings.TrimSpace(name); name != "" {
						opts.Topologies = append(opts.Topologies, name)
					}
				}
			}
			for _, sc := range scens {
				for _, name := range strings.Split(sc, ",") {
					if name = strings.TrimSpace(name); name != "" {
						opts.Scenarios = append(opts.Scenarios, name)
					}
				}
			}
			opts.Logger = cli.NewLogger(stderr, logLevel, "text")
			opts.Progress, opts.Terminal = stderr, isTerminal(stderr)
			opts.CPUProfile = cpuProfile
			// The suite adds its noop action type: it gets registries of
			// its own, with every built-in topology.
			d := cli.Defaults()
			opts.Actions, opts.Registry = d.Actions, d.Topologies
			res, err := bench.Run(cmd.Context(), opts)
			if res != nil {
				met, missed := 0, 0
				for _, t := range res.Targets {
					switch t.Status {
					case bench.TargetMet:
						met++
					case bench.TargetMissed:
						missed++
					}
				}
				fmt.Fprintf(stdout, "wrote %s, %s and %s: targets %d met, %d missed, %d not measured\n",
					filepath.Join(opts.OutDir, bench.ResultsJSON), filepath.Join(opts.OutDir, bench.ResultsMD),
					filepath.Join(opts.OutDir, bench.ChartPNG), met, missed, len(res.Targets)-met-missed)
			}
			switch {
			case err != nil && res == nil: // bad options
				return &exitError{code: cli.ExitInvalid, err: err}
			case err != nil:
				return &exitError{code: cli.ExitFailure, err: err}
			}
			return nil
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	f := cmd.Flags()
	f.StringSliceVar(&topos, "topologies", nil, "topologies to measure, comma-separated (default: "+strings.Join(bench.Topologies, ",")+")")
	defaults := slices.DeleteFunc(slices.Clone(bench.Scenarios), func(s string) bool { return s == bench.ScenarioWorkers })
	f.StringSliceVar(&scens, "scenarios", nil, "runs to measure, comma-separated (default: "+strings.Join(defaults, ",")+
		"; "+bench.ScenarioWorkers+", the nats topology with 1, 2 and 3 observe processes, runs only when named)")
	f.IntVarP(&opts.Events, "events", "n", bench.DefaultEvents, "events per saturated run")
	f.IntVar(&opts.PayloadBytes, "payload", bench.DefaultPayload, "bytes of data per event")
	f.StringVar(&opts.OutDir, "out", bench.DefaultOutDir, "directory of results.json, RESULTS.md and chart.png")
	f.BoolVar(&opts.Quick, "quick", false, "a few events per run, to check that every scenario works (figures are meaningless)")
	f.IntVar(&opts.Rate, "rate", bench.DefaultRate, "events per second of the steady-rate latency run")
	f.DurationVar(&opts.Budget, "budget", 0, "bound the whole suite (e.g. 8m): saturated runs share the time and report what they delivered when theirs runs out")
	f.IntVar(&opts.Partitions, "partitions", 0, "nats.partitions and redis.partitions of the runs on topologies with partitions (0: off)")
	f.StringVar(&opts.BusDriver, "bus-driver", config.DriverMillrace, "bus.driver of the runs on the topologies that have an upstream Watermill driver (embedded, nats, multidb, redis): millrace or watermill")
	f.StringVar(&opts.EmbeddedSync, "embedded-sync", config.SyncAlways, "embedded.sync of the embedded runs and their ceiling's server: always (fsync before each acknowledgement) or an interval such as 2m (NATS's default)")
	f.BoolVar(&cpuProfile, "cpuprofile", false, "profile each topology's no-op run into OUT/profiles (CPU, and the allocations) and list its top functions")
	f.StringVar(&logLevel, "log-level", "error", "the routers' logs on stderr: debug, info, warn or error")
	return cmd
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
