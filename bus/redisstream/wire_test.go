package redisstream_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/bus/redisstream"
)

// WireFormat round-trips a message's UUID, payload and metadata, and
// makes an entry that is not a message into one, instead of failing
// (watermill-redisstream stops reading at an Unmarshal error).
func TestWireFormat(t *testing.T) {
	var w redisstream.WireFormat
	m := message.NewMessage("id-1", []byte(`{"a":1}`))
	m.Metadata.Set(bus.KeyMetadata, "k")
	m.Metadata.Set(bus.TenantMetadata, "acme")
	m.Metadata.Set(bus.RetryDelayMetadata, "5s") // local to one delivery: not written
	values, err := w.Marshal("events", m)
	if err != nil {
		t.Fatal(err)
	}
	// go-redis hands the fields back as strings.
	read := map[string]any{}
	for k, v := range values {
		switch v := v.(type) {
		case []byte:
			read[k] = string(v)
		default:
			read[k] = v
		}
	}
	got, err := w.Unmarshal(read)
	if err != nil {
		t.Fatal(err)
	}
	if got.UUID != "id-1" || string(got.Payload) != `{"a":1}` || got.Metadata.Get(bus.KeyMetadata) != "k" ||
		got.Metadata.Get(bus.TenantMetadata) != "acme" || got.Metadata.Get(bus.RetryDelayMetadata) != "" {
		t.Errorf("round trip: %s %s %v", got.UUID, got.Payload, got.Metadata)
	}

	bad, err := w.Unmarshal(map[string]any{"other": "x"})
	if err != nil {
		t.Fatalf("Unmarshal of a foreign entry: %v, want a message", err)
	}
	if bad.UUID == "" || bad.Metadata.Get(redisstream.UndecodableMetadata) == "" || bad.Metadata.Get(bus.KeyMetadata) == "" {
		t.Errorf("foreign entry: uuid %q, metadata %v; want a new uuid, the reason and a key of its own", bad.UUID, bad.Metadata)
	}
}
