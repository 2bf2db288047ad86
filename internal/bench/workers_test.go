package bench_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/cmd/millrace/cli"
	"github.com/millrace/millrace/internal/bench"
	"github.com/millrace/millrace/internal/testenv"
)

// TestWorkersJob runs the opt-in workers job with a few events: 1, 2
// and 3 observe routers share the nats topology's partitions, and every
// worker of a run handles a part of its events.
func TestWorkersJob(t *testing.T) {
	t.Parallel()
	o := cli.Defaults()
	out := t.TempDir()
	var progress bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := bench.Run(ctx, bench.Options{
		Quick: true, OutDir: out, Actions: o.Actions, Registry: o.Topologies,
		Topologies: []string{"nats"}, Scenarios: []string{bench.ScenarioWorkers},
		PostgresURL: testenv.PostgresURL(), RedisURL: testenv.RedisURL(), NATSURL: testenv.NATSURL(),
		Progress: &progress,
	})
	if err != nil {
		t.Fatalf("Run: %v\nprogress:\n%s", err, progress.String())
	}
	j := res.Workers
	if j == nil || j.Status != bench.StatusMeasured || len(j.Runs) != 3 {
		t.Fatalf("workers job %+v; want 3 measured runs\nprogress:\n%s", j, progress.String())
	}
	for i, run := range j.Runs {
		checkFigures(t, "workers", run.Figures)
		total := 0
		for _, n := range run.Handled {
			total += n
			if n == 0 {
				t.Errorf("%d workers: handled %v; want every worker to handle a part", run.Workers, run.Handled)
			}
		}
		if run.Workers != i+1 || len(run.Handled) != run.Workers || total != run.Figures.Events {
			t.Errorf("run %d: %d workers handled %v (%d events); want %d workers handling %d events",
				i, run.Workers, run.Handled, total, i+1, run.Figures.Events)
		}
	}
	md, err := os.ReadFile(filepath.Join(out, bench.ResultsMD))
	if err != nil || !strings.Contains(string(md), "## Workers") {
		t.Errorf("%s: no Workers section (%v)", bench.ResultsMD, err)
	}
}
