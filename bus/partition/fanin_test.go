package partition_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/bus/partition"
)

// TestFanIn feeds one channel from every partition held, hands each
// partition the same bounds, and stops without anyone reading: a message
// whose partition stopped is dropped, not waited for.
func TestFanIn(t *testing.T) {
	stores(t, func(t *testing.T, l partition.Leases) {
		const parts, perPart = 4, 3
		var (
			mu     sync.Mutex
			shares = map[int]partition.Share{}
		)
		start := func(p int, sh partition.Share) (func(), error) {
			mu.Lock()
			shares[p] = sh
			mu.Unlock()
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				// perPart messages to read, then one nobody reads.
				for i := range perPart + 1 {
					m := message.NewMessageWithContext(ctx, fmt.Sprintf("%d-%d", p, i), nil)
					select {
					case sh.Out <- m:
					case <-ctx.Done():
						return
					}
				}
				<-ctx.Done()
			}()
			return func() { cancel(); <-done }, nil
		}
		out, stop, stopped := partition.FanIn(context.Background(), l, partition.FanInConfig{
			Config:      partition.Config{Partitions: parts, Member: "a", TTL: time.Second},
			MaxInFlight: 8, MaxBuffered: 128, ReadAhead: 1000,
		}, start)

		// Every partition's first perPart messages; the last ones may
		// come too.
		want := map[string]bool{}
		for p := range parts {
			for i := range perPart {
				want[fmt.Sprintf("%d-%d", p, i)] = true
			}
		}
		seen := map[string]bool{}
		timeout := time.After(15 * time.Second)
		for len(want) > 0 {
			select {
			case m := <-out:
				if seen[m.UUID] {
					t.Fatalf("%s twice", m.UUID)
				}
				seen[m.UUID] = true
				delete(want, m.UUID)
			case <-timeout:
				t.Fatalf("missing %v", want)
			}
		}

		ended := make(chan struct{})
		go func() { stop(); close(ended) }()
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			t.Fatal("stop hangs on a message nobody reads")
		}
		<-stopped
		for m := range out {
			t.Errorf("%s after stop", m.UUID)
		}

		mu.Lock()
		defer mu.Unlock()
		if len(shares) != parts {
			t.Fatalf("started %d partitions, want %d", len(shares), parts)
		}
		first := shares[0]
		if first.Slots.Cap() != 8 || cap(first.Buffered) != 128 || first.ReadAhead != 250 {
			t.Errorf("share = slots %d, buffered %d, read-ahead %d; want 8, 128, 250",
				first.Slots.Cap(), cap(first.Buffered), first.ReadAhead)
		}
		for p, sh := range shares {
			if sh.Slots != first.Slots || sh.Buffered != first.Buffered || sh.Out != first.Out {
				t.Errorf("partition %d has bounds of its own", p)
			}
		}
	})
}
