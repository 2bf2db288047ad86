package bus_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/event"
)

func TestToken(t *testing.T) {
	for in, want := range map[string]string{
		"": "_", "orders_db": "orders_db", "a.b": "a_b", "a b": "a_b", "a*": "a_", "x>y": "x_y", "tab\there": "tab_here",
	} {
		if got := bus.Token(in); got != want {
			t.Errorf("Token(%q) = %q; want %q", in, got, want)
		}
	}
}

// TestSetRouting: every publisher routes an event the same way: the key
// is event.Key, the subject three tokens even when a part is empty or
// holds dots.
func TestSetRouting(t *testing.T) {
	ev := &event.Event{ID: "x", Type: event.Update, Entity: "Order.Line", EntityID: "7", Source: ""}
	m := message.NewMessage("x", nil)
	bus.SetRouting(m, ev)
	if got := m.Metadata.Get(bus.KeyMetadata); got != ev.Key() {
		t.Errorf("key = %q; want %q", got, ev.Key())
	}
	if got := m.Metadata.Get(bus.SubjectMetadata); got != "_.Order_Line.UPDATE" {
		t.Errorf("subject = %q; want _.Order_Line.UPDATE", got)
	}
	if got := bus.PartitionKey(m); got != ev.Key() {
		t.Errorf("PartitionKey = %q; want the ordering key", got)
	}
	if got := bus.PartitionKey(message.NewMessage("uuid-1", nil)); got != "uuid-1" {
		t.Errorf("PartitionKey without a key = %q; want the UUID", got)
	}
}
