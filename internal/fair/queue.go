package fair

import "slices"

// Queue is a FIFO per tenant, served round-robin between tenants. The
// zero Queue is empty and ready. It is not safe for concurrent use: its
// owner holds its own lock around it.
type Queue[T comparable] struct {
	tenants map[string]*fifo[T]
	// ring lists the tenants that have waiters, in turn order; next is
	// the index of the one served next.
	ring []*fifo[T]
	next int
	n    int
}

type fifo[T comparable] struct {
	tenant string
	items  []T
}

// Len is the number of waiters.
func (q *Queue[T]) Len() int { return q.n }

// Push adds v behind the earlier waiters of tenant. A tenant that had
// none joins the end of the turn order.
func (q *Queue[T]) Push(tenant string, v T) {
	f, ok := q.tenants[tenant]
	if !ok {
		if q.tenants == nil {
			q.tenants = map[string]*fifo[T]{}
		}
		f = &fifo[T]{tenant: tenant}
		q.tenants[tenant] = f
		q.ring = append(q.ring, f)
	}
	f.items = append(f.items, v)
	q.n++
}

// Pop takes the first waiter of the tenant whose turn it is; ok is false
// when the queue is empty.
func (q *Queue[T]) Pop() (v T, ok bool) {
	if q.n == 0 {
		return v, false
	}
	if q.next >= len(q.ring) {
		q.next = 0
	}
	f := q.ring[q.next]
	v = f.items[0]
	var zero T
	f.items[0] = zero
	f.items = f.items[1:]
	q.n--
	if len(f.items) == 0 {
		q.drop(q.next) // the following tenant moves into next
	} else {
		q.next++
	}
	return v, true
}

// Remove takes v out of tenant's waiters (one that gave up waiting) and
// reports whether it was there.
func (q *Queue[T]) Remove(tenant string, v T) bool {
	f, ok := q.tenants[tenant]
	if !ok {
		return false
	}
	for i, w := range f.items {
		if w != v {
			continue
		}
		f.items = append(f.items[:i], f.items[i+1:]...)
		q.n--
		if len(f.items) == 0 {
			for j, g := range q.ring {
				if g == f {
					q.drop(j)
					if j < q.next {
						q.next--
					}
					break
				}
			}
		}
		return true
	}
	return false
}

// drop removes the emptied tenant at ring index i.
func (q *Queue[T]) drop(i int) {
	delete(q.tenants, q.ring[i].tenant)
	q.ring = slices.Delete(q.ring, i, i+1)
}
