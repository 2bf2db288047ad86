package lanes_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/bus/lanes"
)

func TestOrderPerKeyAndLimit(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := lanes.New(ctx, lanes.Options{MaxInFlight: 3})
	const keys, per = 6, 20
	var settled sync.WaitGroup
	settled.Add(keys * per)
	var acks atomic.Int64
	go func() {
		for i := range per {
			for k := range keys {
				m := message.NewMessage(fmt.Sprint(k, "-", i), []byte(fmt.Sprint(i)))
				m.Metadata.Set("key", fmt.Sprint(k))
				l.Push(fmt.Sprint(k), m, func(acked bool) {
					if acked {
						acks.Add(1)
					}
					settled.Done()
				}, nil)
			}
		}
	}()
	peak := ackInOrder(t, l.Out(), keys*per)
	settled.Wait()
	if peak > 3 {
		t.Errorf("%d messages in flight; limit is 3", peak)
	}
	if peak < 2 {
		t.Errorf("peak in flight %d; different keys must run in parallel", peak)
	}
	if acks.Load() != keys*per {
		t.Errorf("%d acks settled; want %d", acks.Load(), keys*per)
	}
}

// ackInOrder takes n messages from out, checks that each key's come in
// the order of their payloads (0, 1, ...), acks each a millisecond after
// it came, and returns the most held at once.
func ackInOrder(t *testing.T, out <-chan *message.Message, n int) (peak int) {
	t.Helper()
	var mu sync.Mutex
	next := map[string]int{}
	inflight := 0
	for range n {
		m := <-out
		mu.Lock()
		k := m.Metadata.Get("key")
		if got := string(m.Payload); got != fmt.Sprint(next[k]) {
			t.Errorf("key %s: got %s, want %d", k, got, next[k])
		}
		next[k]++
		inflight++
		peak = max(peak, inflight)
		mu.Unlock()
		go func() {
			time.Sleep(time.Millisecond)
			mu.Lock()
			inflight--
			mu.Unlock()
			m.Ack()
		}()
	}
	return peak
}

func TestNackSettlesFalseAndNextOfKeyFollows(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := lanes.New(ctx, lanes.Options{MaxInFlight: 4})
	results := make(chan bool, 2)
	a, b := message.NewMessage("a", nil), message.NewMessage("b", nil)
	l.Push("k", a, func(ok bool) { results <- ok }, nil)
	l.Push("k", b, func(ok bool) { results <- ok }, nil)
	first := <-l.Out()
	select {
	case m := <-l.Out():
		t.Fatalf("%s released before %s settled", m.UUID, first.UUID)
	case <-time.After(50 * time.Millisecond):
	}
	first.Nack()
	if ok := <-results; ok {
		t.Error("a nacked message settled as acked")
	}
	second := <-l.Out()
	second.Ack()
	if ok := <-results; !ok || second.UUID != "b" {
		t.Errorf("second = %s settled %v", second.UUID, ok)
	}
}

func TestTouchWhileInFlight(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := lanes.New(ctx, lanes.Options{MaxInFlight: 1, TouchEvery: 10 * time.Millisecond})
	var touches atomic.Int64
	done := make(chan bool, 1)
	l.Push("k", message.NewMessage("a", nil), func(ok bool) { done <- ok }, func() { touches.Add(1) })
	m := <-l.Out()
	time.Sleep(100 * time.Millisecond)
	m.Ack()
	<-done
	if n := touches.Load(); n < 3 {
		t.Errorf("touched %d times in 100ms at a 10ms period", n)
	}
}

func TestDrainSettlesQueuedAndWaitsForReleased(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := lanes.New(ctx, lanes.Options{MaxInFlight: 1})
	res := make(chan string, 2)
	l.Push("k", message.NewMessage("a", nil), func(ok bool) { res <- fmt.Sprint("a ", ok) }, nil)
	l.Push("k", message.NewMessage("b", nil), func(ok bool) { res <- fmt.Sprint("b ", ok) }, nil)
	m := <-l.Out()
	l.Drain()
	if l.Push("k", message.NewMessage("c", nil), func(bool) {}, nil) {
		t.Error("Push accepted a message while draining")
	}
	if l.Wait(50 * time.Millisecond) {
		t.Error("Wait returned true with a released message unsettled")
	}
	m.Ack()
	if got := <-res; got != "a true" {
		t.Errorf("first settle %q; want the released message acked", got)
	}
	if got := <-res; got != "b false" {
		t.Errorf("second settle %q; want the queued message not acked", got)
	}
	if !l.Wait(time.Second) {
		t.Error("Wait timed out after everything settled")
	}
	l.Close()
	if _, open := <-l.Out(); open {
		t.Error("Out still open after Close")
	}
}

func TestCancelSettlesEverything(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	l := lanes.New(ctx, lanes.Options{MaxInFlight: 1})
	res := make(chan bool, 2)
	l.Push("k", message.NewMessage("a", nil), func(ok bool) { res <- ok }, nil)
	<-l.Out() // released, never settled by the router
	cancel()
	if ok := <-res; ok {
		t.Error("an unsettled message settled as acked after cancel")
	}
	l.Close()
}

// TestRedeliverKeepsOrderAndFreesTheSlot: a nacked message comes back
// after its delay before the next message of its key, and while it waits
// another key's message runs in the only in-flight slot.
func TestRedeliverKeepsOrderAndFreesTheSlot(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := lanes.New(ctx, lanes.Options{MaxInFlight: 1, Redeliver: func(*message.Message) time.Duration { return 200 * time.Millisecond }})
	res := make(chan string, 3)
	l.Push("a", message.NewMessage("a1", nil), func(ok bool) { res <- fmt.Sprint("a1 ", ok) }, nil)
	l.Push("a", message.NewMessage("a2", nil), func(ok bool) { res <- fmt.Sprint("a2 ", ok) }, nil)
	l.Push("b", message.NewMessage("b1", nil), func(ok bool) { res <- fmt.Sprint("b1 ", ok) }, nil)
	var got []string
	nacked := false
	deadline := time.After(10 * time.Second)
	for len(got) < 4 {
		var m *message.Message
		select {
		case m = <-l.Out():
		case <-deadline:
			t.Fatalf("released %v, then nothing", got)
		}
		got = append(got, m.UUID)
		if m.UUID == "a1" && !nacked {
			nacked = true
			m.Nack()
			continue
		}
		m.Ack()
	}
	// b1 runs in the only slot while a1 waits; a2 only after a1's copy.
	if i, j := index(got, "a2"), lastIndex(got, "a1"); i < j || j != index(got, "a1")+1 && index(got, "b1") > j {
		t.Errorf("release order %v; want a1's copy before a2 and b1 while a1 waits", got)
	}
	if index(got, "b1") > lastIndex(got, "a1") {
		t.Errorf("b1 waited for a1's redelivery: %v", got)
	}
	for range 3 {
		if r := <-res; r != "a1 true" && r != "a2 true" && r != "b1 true" {
			t.Errorf("settled %q", r)
		}
	}
}

func index(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func lastIndex(s []string, v string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == v {
			return i
		}
	}
	return -1
}

// TestTouchWhileNackedAgainAndAgain: a message nacked again and again,
// with redelivery delays shorter than TouchEvery, is still touched every
// TouchEvery, so that the bus does not redeliver it behind our back.
func TestTouchWhileNackedAgainAndAgain(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := lanes.New(ctx, lanes.Options{MaxInFlight: 1, TouchEvery: 50 * time.Millisecond,
		Redeliver: func(*message.Message) time.Duration { return 15 * time.Millisecond }})
	var touches atomic.Int32
	settled := make(chan bool, 1)
	l.Push("k", message.NewMessage("1", nil), func(acked bool) { settled <- acked }, func() { touches.Add(1) })
	deadline := time.After(500 * time.Millisecond)
	for done := false; !done; {
		select {
		case m := <-l.Out():
			m.Nack()
		case <-deadline:
			done = true
		}
	}
	m := <-l.Out()
	m.Ack()
	if !<-settled {
		t.Fatal("settled as not acked")
	}
	// 500 ms at one touch per 50 ms: about 10.
	if n := touches.Load(); n < 5 {
		t.Fatalf("%d touches in 500 ms of nacks; want one per 50 ms", n)
	}
}

// BenchmarkLanes pushes messages of distinct keys, as a bus does with
// events of distinct entities, through lanes set up as the JetStream bus
// sets them up (64 in flight, touched every 10 s), and acks each on
// arrival: the dispatch cost per message.
func BenchmarkLanes(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := lanes.New(ctx, lanes.Options{MaxInFlight: 64, TouchEvery: 10 * time.Second})
	go func() {
		for m := range l.Out() {
			m.Ack()
		}
	}()
	var settled sync.WaitGroup
	settle := func(bool) { settled.Done() }
	touch := func() {}
	keys := make([]string, 4096)
	for i := range keys {
		keys[i] = fmt.Sprint("key-", i)
	}
	payload := []byte("{}")
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		settled.Add(1)
		l.Push(keys[i%len(keys)], message.NewMessage(keys[i%len(keys)], payload), settle, touch)
		i++
	}
	settled.Wait()
	b.StopTimer()
	l.Close()
}

// A message queued behind others (its key's or the in-flight bound) is
// held too: the bus must not redeliver it while a flood drains ahead.
func TestTouchWhileQueued(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := lanes.New(ctx, lanes.Options{MaxInFlight: 1, TouchEvery: 10 * time.Millisecond})
	var first, queued atomic.Int64
	done := make(chan bool, 2)
	l.Push("a", message.NewMessage("a", nil), func(ok bool) { done <- ok }, func() { first.Add(1) })
	l.Push("b", message.NewMessage("b", nil), func(ok bool) { done <- ok }, func() { queued.Add(1) })
	m := <-l.Out()
	time.Sleep(100 * time.Millisecond)
	if n := queued.Load(); n < 3 {
		t.Errorf("the queued message was touched %d times in 100ms at a 10ms period", n)
	}
	m.Ack()
	(<-l.Out()).Ack()
	<-done
	<-done
	if n := first.Load(); n < 3 {
		t.Errorf("the message in flight was touched %d times in 100ms at a 10ms period", n)
	}
}

// One slot, fifty messages of a tenant ahead of one of another: the
// other tenant's message is released within one turn of the first
// tenant's, not after its fifty.
func TestSlotsServeTenantsInTurn(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := lanes.New(ctx, lanes.Options{MaxInFlight: 1, MaxBuffered: 100})
	for i := range 50 {
		pushTenant(t, l, "big", fmt.Sprintf("big%d", i))
	}
	pushTenant(t, l, "small", "small")
	// Let every lane's worker reach the in-flight bound.
	time.Sleep(200 * time.Millisecond)
	smallWithinATurn(t, l.Out())
}

func pushTenant(t *testing.T, l *lanes.Lanes, tenant, id string) {
	t.Helper()
	m := message.NewMessage(id, nil)
	m.Metadata.Set(bus.TenantMetadata, tenant)
	if !l.Push(id, m, func(bool) {}, nil) {
		t.Fatalf("push %s refused", id)
	}
}

// smallWithinATurn acks what out releases until the message "small",
// which must come within the first 3 of 51.
func smallWithinATurn(t *testing.T, out <-chan *message.Message) {
	t.Helper()
	for n := 1; n <= 51; n++ {
		m := <-out
		m.Ack()
		if m.UUID == "small" {
			if n > 3 {
				t.Fatalf("the small tenant's message was released %d-th of 51; want within the first 3", n)
			}
			return
		}
	}
	t.Fatal("the small tenant's message was never released")
}

// TestOutAndPrepare: with Options.Out the released messages go to the
// given channel, which Close leaves open; Prepare runs on each release,
// the copy released again after a nack included, and Attempt counts
// them in the delivery metadata.
func TestOutAndPrepare(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan *message.Message)
	type key struct{}
	msgCtx := context.WithValue(context.Background(), key{}, "capture")
	var prepared atomic.Int64
	l := lanes.New(ctx, lanes.Options{
		MaxInFlight: 1,
		Out:         out,
		Redeliver:   func(*message.Message) time.Duration { return 10 * time.Millisecond },
		Prepare: func(p *message.Message) {
			prepared.Add(1)
			lanes.Attempt(p)
			p.SetContext(msgCtx)
		},
	})
	if l.Out() != nil {
		t.Fatal("Out() is not nil with Options.Out")
	}
	settled := make(chan bool, 1)
	if !l.Push("k", message.NewMessage("id-1", []byte("x")), func(ok bool) { settled <- ok }, nil) {
		t.Fatal("push refused")
	}
	for attempt := 1; attempt <= 3; attempt++ {
		var m *message.Message
		select {
		case m = <-out:
		case <-time.After(5 * time.Second):
			t.Fatalf("attempt %d: nothing released on Out", attempt)
		}
		if got := m.Metadata.Get(bus.DeliveryMetadata); got != fmt.Sprint(attempt) {
			t.Errorf("attempt %d: delivery metadata %q", attempt, got)
		}
		if got, _ := m.Context().Value(key{}).(string); got != "capture" {
			t.Errorf("attempt %d: the message does not carry the context Prepare set", attempt)
		}
		if m.UUID != "id-1" || string(m.Payload) != "x" {
			t.Errorf("attempt %d: got %s %q", attempt, m.UUID, m.Payload)
		}
		if attempt < 3 {
			m.Nack()
		} else {
			m.Ack()
		}
	}
	if ok := <-settled; !ok {
		t.Error("settled as not acked after the third attempt's ack")
	}
	if n := prepared.Load(); n != 3 {
		t.Errorf("Prepare ran %d times, want 3", n)
	}
	l.Close()
	select {
	case _, ok := <-out:
		if !ok {
			t.Error("Close closed Options.Out")
		}
	default:
	}
	close(out) // panics if Close closed it
}

// TestSharedSlotsBoundEveryLanes: three lanes that share two slots
// release at most two messages at once between them, each lanes' keys
// still in order, and all of them run.
func TestSharedSlotsBoundEveryLanes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	slots := lanes.NewSlots(2)
	out := make(chan *message.Message)
	var all []*lanes.Lanes
	for range 3 {
		all = append(all, lanes.New(ctx, lanes.Options{Slots: slots, Out: out, MaxBuffered: 100}))
	}
	const keys, per = 4, 10
	var settled sync.WaitGroup
	settled.Add(len(all) * keys * per)
	for li, l := range all {
		go func() {
			for i := range per {
				for k := range keys {
					key := fmt.Sprint(li, "/", k)
					m := message.NewMessage(fmt.Sprint(key, "-", i), []byte(fmt.Sprint(i)))
					m.Metadata.Set("key", key)
					l.Push(key, m, func(bool) { settled.Done() }, nil)
				}
			}
		}()
	}
	peak := ackInOrder(t, out, len(all)*keys*per)
	settled.Wait()
	if peak > 2 {
		t.Errorf("%d messages in flight over the lanes; the shared limit is 2", peak)
	}
	if peak < 2 {
		t.Errorf("peak in flight %d; the lanes must use both slots", peak)
	}
	for _, l := range all {
		l.Close()
	}
}

// TestSharedSlotsServeTenantsInTurnAcrossLanes: one shared slot, fifty
// messages of a tenant in one lanes ahead of one of another tenant in
// another lanes: the other tenant's message is released within one turn
// of the first tenant's.
func TestSharedSlotsServeTenantsInTurnAcrossLanes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	slots := lanes.NewSlots(1)
	out := make(chan *message.Message)
	big := lanes.New(ctx, lanes.Options{Slots: slots, Out: out, MaxBuffered: 100})
	small := lanes.New(ctx, lanes.Options{Slots: slots, Out: out, MaxBuffered: 100})
	for i := range 50 {
		pushTenant(t, big, "big", fmt.Sprintf("big%d", i))
	}
	pushTenant(t, small, "small", "small")
	smallWithinATurn(t, out)
}
