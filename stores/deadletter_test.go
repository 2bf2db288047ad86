package stores_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/millrace/millrace/stores"
)

// testDeadLetters is the conformance suite every dead-letter store runs.
// newStore returns an empty store of its own for each subtest.
func testDeadLetters(t *testing.T, newStore func(t *testing.T) stores.DeadLetters) {
	ctx := context.Background()
	base := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Microsecond)

	entry := func(i int, observer string) stores.DeadLetter {
		return stores.DeadLetter{
			EventID:      fmt.Sprintf("0190a5b0-0000-7000-8000-%012d", i),
			Observer:     observer,
			Action:       observer + "/0:webhook",
			Reason:       stores.ReasonExhausted,
			Error:        fmt.Sprintf("webhook: 503 Service Unavailable (%d)", i),
			Attempts:     3,
			FirstFailure: base.Add(time.Duration(i) * time.Minute),
			LastFailure:  base.Add(time.Duration(i)*time.Minute + 2*time.Second),
			Topic:        "events",
			Payload:      fmt.Appendf(nil, `{"id":"e%d","event_type":"INSERT"}`, i),
		}
	}
	put := func(t *testing.T, s stores.DeadLetters, dl stores.DeadLetter) string {
		t.Helper()
		id, err := s.Put(ctx, dl)
		if err != nil {
			t.Fatalf("Put: %v", err)
		}
		if id == "" {
			t.Fatal("Put returned an empty id")
		}
		return id
	}
	ids := func(dls []stores.DeadLetter) []string {
		out := make([]string, len(dls))
		for i, d := range dls {
			out[i] = d.ID
		}
		return out
	}

	t.Run("PutGet", func(t *testing.T) {
		s := newStore(t)
		want := entry(1, "order_shipped")
		want.Succeeded = []stores.SucceededAction{{Index: 0, Key: "9f86d081884c7d659a2feaa0c55ad015"}, {Index: 2, Key: "9f86d081884c7d659a2feaa0c55ad015#1"}}
		id := put(t, s, want)
		got, err := s.Get(ctx, id)
		if err != nil {
			t.Fatalf("Get(%q): %v", id, err)
		}
		want.ID = id
		assertEntry(t, got, want)
	})

	// A parked group is found by observer and key, in the order it was
	// written, and its fields come back; other entries stay out.
	t.Run("ParkedGroup", func(t *testing.T) {
		s := newStore(t)
		key := stores.ParkKey("db1", "Order", "4/2")
		var want []string
		for i := range 6 {
			dl := entry(i, "o")
			switch i % 3 {
			case 0: // the group
				dl.Key, dl.Parked = key, true
				if i > 0 {
					dl.Reason = stores.ReasonParked
				}
			case 1: // another entity's group
				dl.Key, dl.Parked = stores.ParkKey("db1", "Order", "5"), true
			case 2: // same entity, not parked
				dl.Key = key
			}
			id := put(t, s, dl)
			if i%3 == 0 {
				want = append(want, id)
			}
		}
		put(t, s, stores.DeadLetter{Observer: "other", Key: key, Parked: true, Reason: stores.ReasonPermanent, Payload: []byte("{}")})
		got, err := s.List(ctx, stores.DeadLetterFilter{Observer: "o", Key: key, Parked: true})
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if !reflect.DeepEqual(ids(got), want) {
			t.Fatalf("parked group = %v, want %v in order", ids(got), want)
		}
		if !got[0].Parked || got[0].Key != key || got[1].Reason != stores.ReasonParked {
			t.Errorf("head %+v: want parked, key %q; second reason %q, want parked", got[0], key, got[1].Reason)
		}
		all, err := s.List(ctx, stores.DeadLetterFilter{Parked: true, Limit: 100})
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if len(all) != 5 {
			t.Errorf("List(parked) = %d entries, want 5", len(all))
		}
	})

	t.Run("RawPayload", func(t *testing.T) {
		s := newStore(t)
		for _, p := range [][]byte{
			{0xff, 0xfe, 0x00, '{', 0x80, '\n', '\r'}, // not UTF-8, not JSON, NUL and newlines
			{},
			bytes.Repeat([]byte("x"), 256<<10),
		} {
			dl := stores.DeadLetter{Reason: stores.ReasonUndecodable, Error: "invalid event: body must be a JSON object", Topic: "events", Payload: p}
			id := put(t, s, dl)
			got, err := s.Get(ctx, id)
			if err != nil {
				t.Fatalf("Get(%q): %v", id, err)
			}
			if !bytes.Equal(got.Payload, p) {
				t.Errorf("payload of %d bytes came back as %d bytes %.20q", len(p), len(got.Payload), got.Payload)
			}
			if got.Reason != stores.ReasonUndecodable || got.EventID != "" || got.Observer != "" {
				t.Errorf("Get = reason %q, event %q, observer %q; want undecodable with no event and observer", got.Reason, got.EventID, got.Observer)
			}
			if got.LastFailure.IsZero() || !got.FirstFailure.Equal(got.LastFailure) {
				t.Errorf("zero failure times were not filled: first %v, last %v", got.FirstFailure, got.LastFailure)
			}
		}
	})

	t.Run("GetUnknown", func(t *testing.T) {
		s := newStore(t)
		id := put(t, s, entry(1, "a"))
		for _, bad := range []string{"", "999999999", "1-0", "not-an-id", "../" + id} {
			if bad == id {
				continue
			}
			if _, err := s.Get(ctx, bad); !errors.Is(err, stores.ErrNotFound) {
				t.Errorf("Get(%q) error = %v; want ErrNotFound", bad, err)
			}
		}
	})

	t.Run("List", func(t *testing.T) {
		s := newStore(t)
		var all, obsA []string
		for i := range 9 {
			obs := []string{"a", "b", "a.b"}[i%3]
			id := put(t, s, entry(i, obs))
			all = append(all, id)
			if obs == "a" {
				obsA = append(obsA, id)
			}
		}
		cases := []struct {
			name string
			f    stores.DeadLetterFilter
			want []string
		}{
			{"all oldest first", stores.DeadLetterFilter{}, all},
			{"observer", stores.DeadLetterFilter{Observer: "a"}, obsA},
			{"observer with a dot", stores.DeadLetterFilter{Observer: "a.b"}, []string{all[2], all[5], all[8]}},
			{"unknown observer", stores.DeadLetterFilter{Observer: "nobody"}, []string{}},
			{"limit", stores.DeadLetterFilter{Limit: 4}, all[:4]},
			// entry i failed last at base + i min + 2 s.
			{"since", stores.DeadLetterFilter{Since: base.Add(6 * time.Minute)}, all[6:]},
			{"since is inclusive", stores.DeadLetterFilter{Since: base.Add(6*time.Minute + 2*time.Second)}, all[6:]},
			{"since and observer and limit", stores.DeadLetterFilter{Observer: "a", Since: base.Add(time.Minute), Limit: 1}, obsA[1:2]},
			{"since after everything", stores.DeadLetterFilter{Since: time.Now().Add(time.Hour)}, []string{}},
		}
		for _, c := range cases {
			got, err := s.List(ctx, c.f)
			if err != nil {
				t.Fatalf("%s: List(%+v): %v", c.name, c.f, err)
			}
			if fmt.Sprint(ids(got)) != fmt.Sprint(c.want) {
				t.Errorf("%s: List(%+v) = %v; want %v", c.name, c.f, ids(got), c.want)
			}
		}
		got, err := s.List(ctx, stores.DeadLetterFilter{Observer: "b", Limit: 1})
		if err != nil || len(got) != 1 {
			t.Fatalf("List(b) = %v, %v", got, err)
		}
		want := entry(1, "b")
		want.ID = all[1]
		assertEntry(t, got[0], want)
	})

	t.Run("ListDefaultLimit", func(t *testing.T) {
		s := newStore(t)
		putMany(t, s, 105, func(i int) stores.DeadLetter { return entry(i, "a") })
		got, err := s.List(ctx, stores.DeadLetterFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 100 {
			t.Errorf("List with no limit returned %d entries; want 100", len(got))
		}
		got, err = s.List(ctx, stores.DeadLetterFilter{Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 105 {
			t.Errorf("List(limit 1000) returned %d entries; want 105", len(got))
		}
	})

	t.Run("Delete", func(t *testing.T) {
		s := newStore(t)
		var all []string
		for i := range 4 {
			all = append(all, put(t, s, entry(i, "a")))
		}
		if err := s.Delete(ctx, all[0], all[2]); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		for _, id := range []string{all[0], all[2]} {
			if _, err := s.Get(ctx, id); !errors.Is(err, stores.ErrNotFound) {
				t.Errorf("Get(%q) after Delete: error = %v; want ErrNotFound", id, err)
			}
		}
		got, err := s.List(ctx, stores.DeadLetterFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(ids(got)) != fmt.Sprint([]string{all[1], all[3]}) {
			t.Errorf("List after Delete = %v; want %v", ids(got), []string{all[1], all[3]})
		}
		// Deleting again, or what never existed, is not an error: replays
		// may race.
		if err := s.Delete(ctx, all[0], "999999999", "junk", ""); err != nil {
			t.Errorf("Delete of unknown ids: %v", err)
		}
		if err := s.Delete(ctx); err != nil {
			t.Errorf("Delete(): %v", err)
		}
		assertCount(t, s, 2)
	})

	t.Run("PurgeCount", func(t *testing.T) {
		s := newStore(t)
		assertCount(t, s, 0)
		if n, err := s.Purge(ctx); err != nil || n != 0 {
			t.Errorf("Purge of an empty store = %d, %v; want 0, nil", n, err)
		}
		for i := range 7 {
			put(t, s, entry(i, "a"))
		}
		assertCount(t, s, 7)
		n, err := s.Purge(ctx)
		if err != nil || n != 7 {
			t.Fatalf("Purge = %d, %v; want 7, nil", n, err)
		}
		assertCount(t, s, 0)
		got, err := s.List(ctx, stores.DeadLetterFilter{})
		if err != nil || len(got) != 0 {
			t.Errorf("List after Purge = %v, %v; want none", ids(got), err)
		}
		// The store keeps working, and ids are not reused.
		id := put(t, s, entry(8, "a"))
		if _, err := s.Get(ctx, id); err != nil {
			t.Errorf("Get after Purge: %v", err)
		}
		assertCount(t, s, 1)
	})

	t.Run("ConcurrentPuts", func(t *testing.T) {
		s := newStore(t)
		const n = 200
		got := putMany(t, s, n, func(i int) stores.DeadLetter { return entry(i, fmt.Sprint("o", i%5)) })
		seen := map[string]bool{}
		for _, id := range got {
			if seen[id] {
				t.Fatalf("id %q returned twice", id)
			}
			seen[id] = true
		}
		assertCount(t, s, n)
		list, err := s.List(ctx, stores.DeadLetterFilter{Limit: 2 * n})
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != n {
			t.Fatalf("List returned %d entries; want %d", len(list), n)
		}
		for _, dl := range list {
			if !seen[dl.ID] {
				t.Errorf("List returned id %q that no Put returned", dl.ID)
			}
		}
		perObserver, err := s.List(ctx, stores.DeadLetterFilter{Observer: "o3", Limit: 2 * n})
		if err != nil || len(perObserver) != n/5 {
			t.Errorf("List(o3) returned %d entries, %v; want %d", len(perObserver), err, n/5)
		}
	})
}

// putMany puts n entries from 8 goroutines and returns their ids.
func putMany(t *testing.T, s stores.DeadLetters, n int, mk func(i int) stores.DeadLetter) []string {
	t.Helper()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		ids  []string
		errs []error
	)
	next := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range next {
				id, err := s.Put(context.Background(), mk(i))
				mu.Lock()
				ids, errs = append(ids, id), append(errs, err)
				mu.Unlock()
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent Put: %v", err)
	}
	sort.Strings(ids)
	return ids
}

func assertCount(t *testing.T, s stores.DeadLetters, want int) {
	t.Helper()
	n, err := s.Count(context.Background())
	if err != nil || n != want {
		t.Errorf("Count = %d, %v; want %d, nil", n, err, want)
	}
}

func assertEntry(t *testing.T, got, want stores.DeadLetter) {
	t.Helper()
	if !bytes.Equal(got.Payload, want.Payload) {
		t.Errorf("payload = %q; want %q", got.Payload, want.Payload)
	}
	if !got.FirstFailure.Equal(want.FirstFailure) || !got.LastFailure.Equal(want.LastFailure) {
		t.Errorf("failures = %v .. %v; want %v .. %v", got.FirstFailure, got.LastFailure, want.FirstFailure, want.LastFailure)
	}
	got.Payload, want.Payload = nil, nil
	got.FirstFailure, want.FirstFailure = time.Time{}, time.Time{}
	got.LastFailure, want.LastFailure = time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("entry = %+v\nwant    %+v", got, want)
	}
}

func TestCountingDeadLetters(t *testing.T) {
	written := prometheus.NewCounter(prometheus.CounterOpts{Name: "millrace_dlq_written_total"})
	s := stores.NewCountingDeadLetters(failingPut{}, written)
	if _, err := s.Put(context.Background(), stores.DeadLetter{Reason: "permanent"}); err == nil {
		t.Fatal("Put through a failing store returned nil")
	}
	if v := counterValue(t, written); v != 0 {
		t.Errorf("written = %v after a failed Put; want 0", v)
	}
	s = stores.NewCountingDeadLetters(okPut{}, written)
	for range 3 {
		if _, err := s.Put(context.Background(), stores.DeadLetter{Reason: "permanent"}); err != nil {
			t.Fatal(err)
		}
	}
	if v := counterValue(t, written); v != 3 {
		t.Errorf("written = %v after 3 Puts; want 3", v)
	}
}

// failingPut and okPut stand in for a store only where the decorator's
// own logic is under test; the stores themselves run the suite above.
type failingPut struct{ stores.DeadLetters }

func (failingPut) Put(context.Context, stores.DeadLetter) (string, error) {
	return "", errors.New("store down")
}

type okPut struct{ stores.DeadLetters }

func (okPut) Put(context.Context, stores.DeadLetter) (string, error) { return "1", nil }

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
