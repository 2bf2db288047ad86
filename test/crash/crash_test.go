package crash_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/millrace/millrace/internal/e2e"
)

func TestMain(m *testing.M) { e2e.Main(m) }

const (
	// rows × (1 insert + updates) changes.
	rows    = 2000
	updates = 4
	changes = rows * (1 + updates)
	// batch changes are made at once, every pause.
	batch = 100
	pause = 100 * time.Millisecond
	// A run kills the process at least minKills times, and goes on
	// killing it while changes are being made, up to maxKills times.
	minKills = 5
	maxKills = 12
)

// TestCrash kills millrace with SIGKILL at random moments while changes
// flow, restarts it each time, and checks that every change was
// delivered, counting the duplicates.
func TestCrash(t *testing.T) {
	for _, topology := range e2e.Runs() {
		t.Run(topology, func(t *testing.T) {
			t.Parallel()
			crash(t, topology)
		})
	}
}

// TestCrashUpstreamDrivers is TestCrash on the topologies' upstream
// Watermill bus drivers (bus.driver = "watermill", docs/drivers.md).
func TestCrashUpstreamDrivers(t *testing.T) {
	for _, topology := range []string{"nats" + e2e.WatermillRun, "redis" + e2e.WatermillRun} {
		t.Run(topology, func(t *testing.T) {
			t.Parallel()
			crash(t, topology)
		})
	}
}

func crash(t *testing.T, topology string) {
	recv := e2e.NewReceiver(t)
	r := e2e.NewRig(t, topology, e2e.Options{
		Receiver: recv,
		Observers: map[string]e2e.Observer{
			"crash": {Actions: []map[string]any{recv.Action("crash", nil)}},
		},
		// Messages a killed process held come back after the ack wait:
		// keep it short so the run stays short.
		Env: []string{"MILLRACE_NATS__ACK_WAIT=5s"},
	})
	r.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	produced := make(chan error, 1)
	go func() { produced <- r.Flow(ctx, rows, 1+updates, batch, pause) }()

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	kills := 0
	var prodErr error
	running := true
	start := time.Now()
	for kills < minKills || running {
		up := time.Duration(300+rng.IntN(1200)) * time.Millisecond
		if kills >= maxKills {
			up = time.Hour // let the changes finish
		}
		select {
		case prodErr = <-produced:
			running = false
			if prodErr != nil {
				t.Fatal(prodErr)
			}
		case <-time.After(up):
			r.Proc.Kill()
			kills++
			time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
			r.Start()
		}
	}
	made := len(r.Produced())
	if made != changes {
		t.Fatalf("made %d changes, want %d", made, changes)
	}
	recv.Wait(t, 3*time.Minute, "every change delivered", func() bool {
		return recv.Count("crash") >= changes && e2e.Count(r.Produced(), recv.Requests("crash")).Delivered == changes
	})
	// Late redeliveries of messages held at the last kill still count.
	time.Sleep(2 * time.Second)
	tl := e2e.Count(r.Produced(), recv.Requests("crash"))
	if p := tl.Problems(); p != "" {
		t.Errorf("%s", p)
	}
	t.Logf("%s; took %s", r.Describe(), time.Since(start).Round(time.Second))
	// The last line is the run's result.
	t.Logf("crash %s: changes=%d kills=%d lost=%d duplicates=%d", topology, tl.Changes, kills, len(tl.Lost), tl.Duplicates)
}
