package e2e

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// Flow makes rows × rounds changes, batch rows at a time with pause
// between batches: round 0 inserts rows 1..rows with status "new", each
// later round updates them all (status "r<round>", data.n counting the
// updates). It returns when the changes are made or ctx ends.
func (r *Rig) Flow(ctx context.Context, rows, rounds, batch int, pause time.Duration) error {
	for round := range rounds {
		for from := 1; from <= rows; from += batch {
			ids := Range(from, min(from+batch, rows+1))
			var err error
			if round == 0 {
				err = r.Insert(ctx, ids, "new")
			} else {
				err = r.Update(ctx, ids, "r"+strconv.Itoa(round))
			}
			if err != nil {
				return err
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(pause):
			}
		}
	}
	return nil
}

// Partition lease messages of the workers' logs (bus/partition).
const (
	logPartitionAcquired  = "partition: acquired"
	logPartitionReleased  = "partition: released"
	logPartitionLost      = "partition: lease lost to another worker; stopping the partition"
	logPartitionNoRenewal = "partition: cannot renew the lease; stopping the partition"
)

// HeldPartitions is the number of partitions p holds, from its log: those
// it acquired, less those it released or stopped (a lost lease).
func HeldPartitions(p *Process) int {
	n := 0
	for _, l := range p.Logs() {
		switch l.Msg {
		case logPartitionAcquired:
			n++
		case logPartitionReleased, logPartitionLost, logPartitionNoRenewal:
			n--
		}
	}
	return n
}

// WaitDealt waits until each of workers holds its equal share of
// partitions, so that all of them run events; it fails the test after
// timeout.
func WaitDealt(t testing.TB, partitions int, timeout time.Duration, workers ...*Process) {
	t.Helper()
	share := partitions / len(workers)
	deadline := time.Now().Add(timeout)
	for _, w := range workers {
		for HeldPartitions(w) != share {
			if time.Now().After(deadline) {
				t.Fatalf("%s holds %d partitions after %s, want %d", w.name, HeldPartitions(w), timeout, share)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
