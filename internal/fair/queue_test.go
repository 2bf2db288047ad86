package fair_test

import (
	"slices"
	"testing"

	"github.com/millrace/millrace/internal/fair"
)

func popAll(q *fair.Queue[string]) []string {
	var out []string
	for {
		v, ok := q.Pop()
		if !ok {
			return out
		}
		out = append(out, v)
	}
}

func TestQueueServesTenantsInTurn(t *testing.T) {
	var q fair.Queue[string]
	for i := range 5 {
		q.Push("big", "big"+string(rune('0'+i)))
	}
	q.Push("small", "small0")
	q.Push("other", "other0")
	q.Push("small", "small1")
	if q.Len() != 8 {
		t.Fatalf("Len = %d; want 8", q.Len())
	}
	got := popAll(&q)
	want := []string{"big0", "small0", "other0", "big1", "small1", "big2", "big3", "big4"}
	if !slices.Equal(got, want) {
		t.Fatalf("order %v; want %v", got, want)
	}
	if q.Len() != 0 {
		t.Fatalf("Len = %d after popping all", q.Len())
	}
}

func TestQueueTenantThatEmptiesRejoinsAtTheEnd(t *testing.T) {
	var q fair.Queue[string]
	q.Push("a", "a0")
	q.Push("b", "b0")
	q.Push("b", "b1")
	if v, _ := q.Pop(); v != "a0" {
		t.Fatalf("first pop %q; want a0", v)
	}
	// a has no waiter left; its next one joins behind b.
	q.Push("c", "c0")
	q.Push("a", "a1")
	got := popAll(&q)
	want := []string{"b0", "c0", "a1", "b1"}
	if !slices.Equal(got, want) {
		t.Fatalf("order %v; want %v", got, want)
	}
}

func TestQueueRemove(t *testing.T) {
	var q fair.Queue[string]
	q.Push("a", "a0")
	q.Push("b", "b0")
	q.Push("c", "c0")
	q.Push("a", "a1")
	if v, _ := q.Pop(); v != "a0" {
		t.Fatalf("first pop %q; want a0", v)
	}
	// b's turn is next; removing b's only waiter passes the turn to c.
	if !q.Remove("b", "b0") {
		t.Fatal("Remove(b0) = false; want true")
	}
	if q.Remove("b", "b0") || q.Remove("x", "x0") {
		t.Fatal("Remove of a waiter not queued = true")
	}
	// Removing a tenant before the one whose turn it is keeps the turn.
	q.Push("d", "d0")
	if v, _ := q.Pop(); v != "c0" {
		t.Fatalf("pop after removal %q; want c0", v)
	}
	if !q.Remove("a", "a1") {
		t.Fatal("Remove(a1) = false")
	}
	got := popAll(&q)
	if !slices.Equal(got, []string{"d0"}) {
		t.Fatalf("rest %v; want [d0]", got)
	}
}
