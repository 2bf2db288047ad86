package partition_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/millrace/millrace/bus/partition"
	"github.com/millrace/millrace/internal/testenv"
)

// stores runs f against the lease stores on the real services.
func stores(t *testing.T, f func(t *testing.T, l partition.Leases)) {
	t.Run("jetstream", func(t *testing.T) {
		t.Parallel()
		_, js, prefix := testenv.NATS(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l, err := partition.NewKVLeases(ctx, js, prefix+"_leases", time.Second, 1)
		if err != nil {
			t.Fatal(err)
		}
		f(t, l)
	})
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		client, prefix := testenv.Redis(t)
		f(t, partition.NewRedisLeases(client, prefix))
	})
}

func TestLeases(t *testing.T) {
	stores(t, func(t *testing.T, l partition.Leases) {
		ctx := context.Background()
		const ttl = time.Second
		must := func(ok bool, err error) bool {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
			return ok
		}
		if !must(l.Acquire(ctx, 3, "a", ttl)) {
			t.Fatal("a cannot take a free partition")
		}
		if must(l.Acquire(ctx, 3, "b", ttl)) {
			t.Fatal("b took a partition a holds")
		}
		if !must(l.Acquire(ctx, 3, "a", ttl)) {
			t.Fatal("a cannot renew its own partition")
		}
		if !must(l.Acquire(ctx, 4, "b", ttl)) {
			t.Fatal("b cannot take another free partition")
		}
		// Release by a non-holder changes nothing.
		if err := l.Release(ctx, 3, "b"); err != nil {
			t.Fatal(err)
		}
		if must(l.Acquire(ctx, 3, "b", ttl)) {
			t.Fatal("b took partition 3 after releasing a lease it did not hold")
		}
		if err := l.Release(ctx, 3, "a"); err != nil {
			t.Fatal(err)
		}
		if !must(l.Acquire(ctx, 3, "b", ttl)) {
			t.Fatal("b cannot take a released partition")
		}
		// A lease that is not renewed runs out.
		deadline := time.Now().Add(5 * ttl)
		for !must(l.Acquire(ctx, 4, "c", ttl)) {
			if time.Now().After(deadline) {
				t.Fatal("b's lease on partition 4 did not run out")
			}
			time.Sleep(100 * time.Millisecond)
		}

		// Membership: joined members are listed until they leave or
		// stop renewing.
		for _, m := range []string{"x", "y"} {
			if _, err := l.Join(ctx, m, ttl); err != nil {
				t.Fatal(err)
			}
		}
		members, err := l.Join(ctx, "z", ttl)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(members)
		if !slices.Equal(members, []string{"x", "y", "z"}) {
			t.Fatalf("members = %v, want [x y z]", members)
		}
		if err := l.Leave(ctx, "y"); err != nil {
			t.Fatal(err)
		}
		if members, _ = l.Join(ctx, "z", ttl); slices.Contains(members, "y") {
			t.Fatalf("members after y left = %v", members)
		}
		deadline = time.Now().Add(5 * ttl)
		for slices.Contains(members, "x") {
			if time.Now().After(deadline) {
				t.Fatalf("x did not renew but is still a member: %v", members)
			}
			time.Sleep(100 * time.Millisecond)
			if members, err = l.Join(ctx, "z", ttl); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// ledger records who consumes which partition and fails the test when
// two members consume one partition at once.
type ledger struct {
	t     *testing.T
	mu    sync.Mutex
	owner map[int]string
}

func (g *ledger) consume(member string) partition.Consume {
	return func(p int) (func(), error) {
		g.mu.Lock()
		defer g.mu.Unlock()
		if o, ok := g.owner[p]; ok {
			g.t.Errorf("partition %d started on %s while %s consumes it", p, member, o)
		}
		g.owner[p] = member
		return func() {
			time.Sleep(20 * time.Millisecond) // a drain
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.owner[p] == member {
				delete(g.owner, p)
			}
		}, nil
	}
}

// shares counts the partitions each member consumes.
func (g *ledger) shares() map[string]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := map[string]int{}
	for _, m := range g.owner {
		n[m]++
	}
	return n
}

func (g *ledger) waitFor(t *testing.T, what string, want map[string]int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := g.shares()
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: shares = %v, want %v", what, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// crashable is a store whose member can be cut off, as a process that
// hangs or loses its network is.
type crashable struct {
	partition.Leases
	mu  sync.Mutex
	cut bool
}

var errCut = errors.New("cut off")

func (c *crashable) down() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.cut }

func (c *crashable) Join(ctx context.Context, m string, ttl time.Duration) ([]string, error) {
	if c.down() {
		return nil, errCut
	}
	return c.Leases.Join(ctx, m, ttl)
}

func (c *crashable) Acquire(ctx context.Context, p int, m string, ttl time.Duration) (bool, error) {
	if c.down() {
		return false, errCut
	}
	return c.Leases.Acquire(ctx, p, m, ttl)
}

func TestRunSharesAndMoves(t *testing.T) {
	stores(t, func(t *testing.T, l partition.Leases) {
		g := &ledger{t: t, owner: map[int]string{}}
		const ttl = time.Second
		start := func(member string, leases partition.Leases) (stop func()) {
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				partition.Run(ctx, leases, partition.Config{Partitions: 12, Member: member, TTL: ttl}, g.consume(member))
			}()
			return func() { cancel(); <-done }
		}
		stopA := start("a", l)
		g.waitFor(t, "one member", map[string]int{"a": 12})
		stopB := start("b", l)
		cut := &crashable{Leases: l}
		stopC := start("c", cut)
		defer stopB()
		g.waitFor(t, "three members", map[string]int{"a": 4, "b": 4, "c": 4})

		// A member that stops leaves and releases at once.
		stopA()
		g.waitFor(t, "a stopped", map[string]int{"b": 6, "c": 6})

		// A member cut off from the store stops its partitions before
		// its leases run out, and the others take them over after.
		cut.mu.Lock()
		cut.cut = true
		cut.mu.Unlock()
		g.waitFor(t, "c cut off", map[string]int{"b": 12})
		stopC()
	})
}
