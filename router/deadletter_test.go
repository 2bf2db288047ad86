package router

import (
	"bytes"
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/millrace/millrace/stores"

	"github.com/millrace/millrace/bus"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
)

// TestUndecodableIsDeadLettered publishes bad messages straight onto the
// bus, each under the ordering key of the valid event that follows it:
// every bad one must land in the dead-letter store with its raw bytes and
// be acked, or the valid event, queued behind them, would never run. A
// replay of such an entry reaches the router again and comes back.
func TestUndecodableIsDeadLettered(t *testing.T) {
	const token = "t"
	r, addr, rec := dlqTestRouter(t, adminTokenEnv(t, token), `
[observers.a]
entity = "Order"
actions = [{type = "dlqrecord", observer = "a"}]
`)
	ctx := context.Background()
	ev, _ := testEvent(t, "Order")
	bad := [][]byte{
		{0xff, 0xfe, 0x00, 'n', 'o', 't', ' ', 'j', 's', 'o', 'n'},
		[]byte(`[{"id": "x"}]`),
		[]byte(`{"event_type": "INSERT", "entity_type": "Order", "entity_id": "1", "data": {}}`), // no id
		[]byte(`{"id": "` + uuid.NewString() + `", "event_type": "TRUNCATE", "entity_type": "Order", "entity_id": "1"}`),
	}
	for _, p := range bad {
		m := message.NewMessageWithContext(ctx, watermill.NewUUID(), p)
		m.Metadata.Set(bus.KeyMetadata, ev.Key())
		m.Metadata.Set(bus.SubjectMetadata, "garbage")
		if err := r.backend.Publisher.Publish(r.cfg.Router.Topic, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, "a", ev.ID)

	store := r.backend.DeadLetters
	var got []stores.DeadLetter
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		got, err = store.List(ctx, stores.DeadLetterFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) >= len(bad) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(got) != len(bad) {
		t.Fatalf("%d dead letters; want %d, one per bad message: %+v", len(got), len(bad), got)
	}
	for _, p := range bad {
		found := false
		for _, dl := range got {
			if bytes.Equal(dl.Payload, p) {
				found = true
				if dl.Reason != stores.ReasonUndecodable || dl.Error == "" || dl.Topic != r.cfg.Router.Topic {
					t.Errorf("dead letter of %q = reason %q, error %q, topic %q; want undecodable, a reason and topic %q",
						p, dl.Reason, dl.Error, dl.Topic, r.cfg.Router.Topic)
				}
			}
		}
		if !found {
			t.Errorf("no dead letter holds the raw bytes %q", p)
		}
	}
	if n := rec.count("a", ev.ID); n != 1 {
		t.Errorf("the valid event ran %d times; want 1", n)
	}

	// Replayed as it is, the bad message is dead-lettered again: a new
	// entry with the same bytes.
	var res ReplayResponse
	if code := adminCall(t, http.MethodPost, addr+"/v1/dlq/replay", token, ReplayRequest{IDs: []string{got[0].ID}}, &res); code != http.StatusOK {
		t.Fatalf("replay = %d %+v", code, res)
	}
	waitUntil(t, "the replayed bad message back in the store", func() bool {
		l, err := store.List(ctx, stores.DeadLetterFilter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, dl := range l {
			if dl.ID == got[0].ID {
				t.Fatalf("entry %s still in the store after its replay", dl.ID)
			}
		}
		return len(l) == len(bad) && bytes.Equal(l[len(l)-1].Payload, got[0].Payload) && l[len(l)-1].Reason == stores.ReasonUndecodable
	})
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
