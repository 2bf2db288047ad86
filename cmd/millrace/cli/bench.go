package cli

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/millrace/millrace/bench"
	"github.com/millrace/millrace/config"
)

func benchCmd(o Options, stdout, stderr io.Writer) *cobra.Command {
	var (
		topos      []string
		opts       bench.Options
		cpuProfile bool
	)
	cmd := &cobra.Command{
		Use:   "bench [--topologies embedded,nats] [-n EVENTS] [--rate N] [--out DIR]",
		Short: "Measure throughput, latency, CPU and memory per topology beside the client-library ceiling",
		Long: `bench starts millrace in this process on each topology and pushes change
events through the whole pipeline (capture or publish, bus, dedup, result
cache, one observer, one action), then runs the same publish-then-consume
job straight on the client library: the ceiling. It writes results.json,
RESULTS.md and chart.png to --out. Topologies not registered in this build
are reported as not available; their ceilings are measured all the same.

Services: PostgreSQL, Redis and NATS at their local default ports, or at
$` + bench.PostgresURLEnv + `, $` + bench.RedisURLEnv + ` and $` + bench.NATSURLEnv + `.
docs/performance.md explains every figure.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, t := range topos {
				for _, name := range strings.Split(t, ",") {
					if name = strings.TrimSpace(name); name != "" {
						opts.Topologies = append(opts.Topologies, name)
					}
				}
			}
			level := "error"
			if f := cmd.Flag("log-level"); f != nil && f.Changed {
				level = f.Value.String()
			}
			opts.Logger = NewLogger(stderr, level, "text")
			opts.Progress, opts.Terminal = stderr, isTerminal(stderr)
			opts.CPUProfile = cpuProfile
			// The suite adds its noop action type: it gets registries of
			// its own, with this binary's topologies.
			opts.Actions = Defaults().Actions
			opts.Registry = o.Topologies
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := bench.Run(ctx, opts)
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
				return &exitError{code: ExitInvalid, err: err}
			case err != nil:
				return &exitError{code: ExitFailure, err: err}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&topos, "topologies", nil, "topologies to measure, comma-separated (default: "+strings.Join(config.Topologies, ",")+")")
	f.IntVarP(&opts.Events, "events", "n", bench.DefaultEvents, "events per saturated run")
	f.IntVar(&opts.PayloadBytes, "payload", bench.DefaultPayload, "bytes of data per event")
	f.StringVar(&opts.OutDir, "out", bench.DefaultOutDir, "directory of results.json, RESULTS.md and chart.png")
	f.BoolVar(&opts.Quick, "quick", false, "a few events per run, to check that every scenario works (figures are meaningless)")
	f.IntVar(&opts.Rate, "rate", bench.DefaultRate, "events per second of the steady-rate latency run")
	f.DurationVar(&opts.Budget, "budget", 0, "bound the whole suite (e.g. 8m): saturated runs share the time and report what they delivered when theirs runs out")
	f.IntVar(&opts.Partitions, "partitions", 0, "nats.partitions and redis.partitions of the runs (0: off)")
	f.BoolVar(&cpuProfile, "cpuprofile", false, "profile each topology's no-op run into OUT/profiles and list its top functions")
	return cmd
}
