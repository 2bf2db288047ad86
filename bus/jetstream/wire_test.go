package jetstream_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/bus/jetstream"
)

// WireFormat writes the subject and headers of docs/bus.md and reads
// them back; without Millrace-Key the key comes from the envelope, as on
// millrace's subscriber.
func TestWireFormat(t *testing.T) {
	w := jetstream.WireFormat{Config: jetstream.Config{SubjectPrefix: "mr"}}
	m := message.NewMessage("id-1", []byte(`{}`))
	bus.Route(m, "shop", "Order", "7", "acme", "UPDATE")
	m.Metadata.Set(bus.ObserverMetadata, "o")
	nm, err := w.Marshal("events", m)
	if err != nil {
		t.Fatal(err)
	}
	if nm.Subject != "mr.events.shop.Order.UPDATE" || nm.Header.Get("Nats-Msg-Id") != "events:id-1" ||
		nm.Header.Get("Millrace-Uuid") != "id-1" || nm.Header.Get("Millrace-Md-millrace_observer") != "o" {
		t.Errorf("marshalled: subject %s, headers %v", nm.Subject, nm.Header)
	}
	got, err := w.Unmarshal(nm)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{bus.KeyMetadata, bus.TenantMetadata, bus.ObserverMetadata} {
		if got.Metadata.Get(k) != m.Metadata.Get(k) {
			t.Errorf("metadata %s = %q, want %q", k, got.Metadata.Get(k), m.Metadata.Get(k))
		}
	}
	if got.UUID != "id-1" {
		t.Errorf("uuid %q, want id-1", got.UUID)
	}

	raw := nats.NewMsg("mr.events.x")
	raw.Data = []byte(`{"source":"shop","entity_type":"Order","entity_id":"7"}`)
	raw.Header.Set("Millrace-Uuid", "id-2")
	got, err = w.Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got.Metadata.Get(bus.KeyMetadata) != m.Metadata.Get(bus.KeyMetadata) {
		t.Errorf("key without Millrace-Key: %q, want the envelope's %q", got.Metadata.Get(bus.KeyMetadata), m.Metadata.Get(bus.KeyMetadata))
	}
}

// BenchmarkMarshal writes a captured change's message: the headers of
// its metadata, its id and its subject.
func BenchmarkMarshal(b *testing.B) {
	w := jetstream.WireFormat{Config: jetstream.Config{SubjectPrefix: "mr"}}
	m := message.NewMessage("3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b", []byte(`{}`))
	bus.Route(m, "shop", "Order", "7", "acme", "UPDATE")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.Marshal("events", m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnmarshal reads a delivered message: its id, key, metadata
// and delivery count.
func BenchmarkUnmarshal(b *testing.B) {
	w := jetstream.WireFormat{Config: jetstream.Config{SubjectPrefix: "mr"}}
	m := message.NewMessage("3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b", []byte(`{}`))
	bus.Route(m, "shop", "Order", "7", "acme", "UPDATE")
	nm, err := w.Marshal("events", m)
	if err != nil {
		b.Fatal(err)
	}
	nm.Reply = "$JS.ACK.ORDERS.workers_events.1.2045.77.1733300000000000000.12"
	nm.Sub = &nats.Subscription{}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.Unmarshal(nm); err != nil {
			b.Fatal(err)
		}
	}
}
