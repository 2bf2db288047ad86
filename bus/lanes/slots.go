package lanes

import (
	"sync"

	"github.com/millrace/millrace/internal/fair"
)

// Slots bounds the messages released at once by one or more Lanes. A
// freed slot goes to the tenants waiting for one in turn (fair.Queue),
// so that a tenant whose flood fills the lanes does not keep another
// tenant's messages waiting behind the whole flood: each waits for one
// turn of the tenants that wait beside it.
type Slots struct {
	n    int
	mu   sync.Mutex
	free int
	q    fair.Queue[chan struct{}]
}

// NewSlots returns n free slots (at least one).
func NewSlots(n int) *Slots { n = max(n, 1); return &Slots{n: n, free: n} }

// Cap is the number of slots.
func (s *Slots) Cap() int { return s.n }

// acquire takes a slot for a message of tenant, waiting its turn; false
// when stop or done closes first.
func (s *Slots) acquire(tenant string, stop, done <-chan struct{}) bool {
	s.mu.Lock()
	if s.free > 0 && s.q.Len() == 0 {
		s.free--
		s.mu.Unlock()
		return true
	}
	granted := make(chan struct{})
	s.q.Push(tenant, granted)
	s.mu.Unlock()
	select {
	case <-granted:
		return true
	case <-stop:
	case <-done:
	}
	s.mu.Lock()
	waiting := s.q.Remove(tenant, granted)
	s.mu.Unlock()
	if !waiting {
		s.release() // granted as it gave up: pass the slot on
	}
	return false
}

// release frees a slot: to the next tenant's waiter, or to the pool.
func (s *Slots) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if granted, ok := s.q.Pop(); ok {
		close(granted)
		return
	}
	s.free++
}
