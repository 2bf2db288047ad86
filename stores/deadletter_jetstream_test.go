package stores_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/stores"
)

func TestJetStreamDeadLetters(t *testing.T) {
	_, js, prefix := testenv.NATS(t)
	var n atomic.Int32
	testDeadLetters(t, func(t *testing.T) stores.DeadLetters {
		i := n.Add(1)
		s, err := stores.NewJetStreamDeadLetters(context.Background(), js, stores.JetStreamDeadLettersConfig{
			Stream:  fmt.Sprintf("%s_DLQ%d", strings.ToUpper(prefix), i),
			Subject: fmt.Sprintf("%s_dlq%d", prefix, i),
		})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestJetStreamDeadLettersMaxEntries(t *testing.T) {
	_, js, prefix := testenv.NATS(t)
	ctx := context.Background()
	cfg := stores.JetStreamDeadLettersConfig{Stream: strings.ToUpper(prefix) + "_DLQ", Subject: prefix + "_dlq", MaxEntries: 5}
	s, err := stores.NewJetStreamDeadLetters(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	assertCapped(t, s, 5, 5)
	// Opening the store again (a restart) keeps its entries.
	s2, err := stores.NewJetStreamDeadLetters(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	assertCount(t, s2, 5)
}

func TestJetStreamDeadLettersConfig(t *testing.T) {
	for _, c := range []stores.JetStreamDeadLettersConfig{
		{Subject: "x_dlq"},
		{Stream: "X"},
		{Stream: "X", Subject: "x.>"},
		{Stream: "X", Subject: "x", MaxEntries: -1},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil; want an error", c)
		}
	}
}

// assertCapped puts 3*capacity entries one by one and checks that at most
// want remain, the newest.
func assertCapped(t *testing.T, s stores.DeadLetters, capacity, want int) {
	t.Helper()
	ctx := context.Background()
	var last string
	for i := range 3 * capacity {
		id, err := s.Put(ctx, stores.DeadLetter{Reason: stores.ReasonPermanent, Observer: "o", EventID: fmt.Sprint(i)})
		if err != nil {
			t.Fatal(err)
		}
		last = id
	}
	list, err := s.List(ctx, stores.DeadLetterFilter{Limit: 10 * capacity})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) > want || len(list) == 0 {
		t.Fatalf("%d entries remain of %d put with a cap of %d; want at most %d", len(list), 3*capacity, capacity, want)
	}
	if list[len(list)-1].ID != last || list[len(list)-1].EventID != fmt.Sprint(3*capacity-1) {
		t.Errorf("newest entry = %+v; want id %s", list[len(list)-1], last)
	}
	if list[0].EventID == "0" {
		t.Errorf("the oldest entry survived the cap")
	}
}
