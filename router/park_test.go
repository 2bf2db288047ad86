package router

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/stores"
)

// A parked group whose head fails again on a replay stays parked, in
// order, and nothing is written twice; the ordinary replay leaves its
// entries alone; `dlq skip` keeps the head as an ordinary dead letter
// and replays the rest, in order, each once; the entity then runs again.
func TestParkReplayFailsAgainThenSkip(t *testing.T) {
	const token = "t"
	hook, url := newHookCounter(t, true)
	r, addr, _ := dlqTestRouter(t, adminTokenEnv(t, token), `
[observers.o]
entity = "Order"
on_failure = "park"
retry = { max_attempts = 1 }
[[observers.o.actions]]
type = "webhook"
url = "`+url+`/o"
allow_private = true
`)
	ctx := context.Background()
	store := r.backend.DeadLetters
	var evs []*event.Event
	for range 3 {
		ev, _ := testEvent(t, "Order")
		evs = append(evs, ev)
		if err := r.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	key := stores.ParkKey("", "Order", "42")
	group := func() []stores.DeadLetter {
		t.Helper()
		l, err := store.List(ctx, stores.DeadLetterFilter{Observer: "o", Key: key, Parked: true})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	waitUntil(t, "3 parked events", func() bool { return len(group()) == 3 })
	if n := hook.total(); n != 1 {
		t.Fatalf("endpoint got %d requests; want 1: the later events wait", n)
	}
	// The ordinary replay refuses or passes over parked entries.
	var res ReplayResponse
	if code := adminCall(t, http.MethodPost, addr+"/v1/dlq/replay", token, ReplayRequest{All: true}, &res); code != http.StatusOK || res.Replayed != 0 {
		t.Errorf("replay all = %d %+v; want 200 and nothing replayed", code, res)
	}
	if code := adminCall(t, http.MethodPost, addr+"/v1/dlq/replay", token, ReplayRequest{IDs: []string{group()[1].ID}}, &res); code != http.StatusConflict {
		t.Errorf("replay of a parked entry by id = %d; want 409", code)
	}
	// Still failing: the head runs once more and the group stays.
	if code := adminCall(t, http.MethodPost, addr+"/v1/dlq/replay", token, ReplayRequest{Entity: key}, &res); code != http.StatusAccepted || res.Groups != 1 || res.Replayed != 3 {
		t.Fatalf("replay --entity = %d %+v; want 202, 1 group of 3", code, res)
	}
	waitUntil(t, "the head's second attempt", func() bool { return hook.total() == 2 })
	time.Sleep(300 * time.Millisecond)
	g := group()
	if len(g) != 3 || g[0].EventID != evs[0].ID || g[1].EventID != evs[1].ID || g[2].EventID != evs[2].ID || hook.total() != 2 {
		t.Fatalf("after a failed replay: group %d entries, %d requests; want the same 3 in order and 2 requests", len(g), hook.total())
	}
	// Skip: the head is kept as an ordinary dead letter, the rest runs.
	hook.failing.Store(false)
	if code := adminCall(t, http.MethodPost, addr+"/v1/dlq/skip", token, ReplayRequest{Entity: key}, &res); code != http.StatusAccepted {
		t.Fatalf("skip = %d %+v; want 202", code, res)
	}
	waitUntil(t, "the group replayed", func() bool { return len(group()) == 0 })
	all, err := store.List(ctx, stores.DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].EventID != evs[0].ID || all[0].Parked {
		t.Errorf("dead letters after skip = %+v; want the head only, no longer parked", all)
	}
	next, _ := testEvent(t, "Order")
	if err := r.Publish(ctx, next); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the next event delivered", func() bool { return hook.total() == 5 })
	got := hook.requests()
	for i, ev := range append(evs[1:], next) {
		n := 0
		for id, c := range got {
			if strings.Contains(id, ev.ID) {
				n += c
			}
		}
		if n != 1 {
			t.Errorf("event %d requested %d times; want once", i+1, n)
		}
	}
	if v := metricValue(t, addr, "millrace_parked_entities"); v != "0" {
		t.Errorf("millrace_parked_entities = %s; want 0", v)
	}
}
