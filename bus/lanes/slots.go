package lanes

import (
	"sync"
	"time"

	"github.com/millrace/millrace/internal/fair"
)

// Slots bounds the messages released at once by one or more Lanes, and
// runs the workers that release them: at most one worker per slot, each
// releasing one message at a time, so that the workers are the bound.
// The keys ready in any of the lanes wait in one queue, served in turn
// by tenant (fair.Queue), so that a tenant whose flood fills the lanes
// does not keep another tenant's messages waiting behind the whole
// flood: each waits for one turn of the tenants that wait beside it.
//
// Lanes that share Slots (a bus consuming several partitions with one
// lanes each) share its workers: each lanes with workers of its own, up
// to the slots, had several times more workers than slots, and most
// releases waited for a slot, a goroutine parked and woken per message.
type Slots struct {
	n int

	mu    sync.Mutex
	ready fair.Queue[ready] // keys whose first message waits for a worker
	// wake hands a ready key to an idle worker: one token per idle
	// worker woken, so it never holds more than n.
	wake    chan struct{}
	workers int // running, idle ones included
	idle    int // waiting on wake
}

// ready is a key of l whose first message may be released.
type ready struct {
	l   *Lanes
	key string
}

// workerIdle is how long a worker with nothing to release waits for a
// ready key before it ends. Workers are bounded by the slots: a worker
// per key (each waiting behind a flood, a goroutine and a stack each for
// the collector to scan) cost a fifth of a busy consumer's CPU.
const workerIdle = time.Second

// NewSlots returns n slots (at least one).
func NewSlots(n int) *Slots {
	n = max(n, 1)
	return &Slots{n: n, wake: make(chan struct{}, n)}
}

// Cap is the number of slots.
func (s *Slots) Cap() int { return s.n }

// push makes key of l ready and gets it served: by an idle worker, or
// by a new one while there are fewer than the slots; otherwise a busy
// worker takes it when it is done. l.mu may be held (l.mu before s.mu,
// never the other way).
func (s *Slots) push(tenant string, l *Lanes, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready.Push(tenant, ready{l: l, key: key})
	switch {
	case s.idle > 0:
		s.idle--
		s.wake <- struct{}{}
	case s.workers < s.n:
		s.workers++
		go s.work()
	}
}

// work releases the first message of each ready key in turn, until no
// key was ready for workerIdle.
func (s *Slots) work() {
	var idle *time.Timer
	for {
		s.mu.Lock()
		r, ok := s.ready.Pop()
		if ok {
			s.mu.Unlock()
			r.l.serveFirst(r.key)
			continue
		}
		s.idle++
		s.mu.Unlock()
		if idle == nil {
			idle = time.NewTimer(workerIdle)
			defer idle.Stop()
		} else {
			idle.Reset(workerIdle)
		}
		select {
		case <-s.wake:
			continue
		case <-idle.C:
		}
		s.mu.Lock()
		select {
		case <-s.wake: // woken as it gave up: a key is ready
			s.mu.Unlock()
			continue
		default:
		}
		s.idle--
		if s.ready.Len() > 0 {
			s.mu.Unlock()
			continue
		}
		s.workers--
		s.mu.Unlock()
		return
	}
}
