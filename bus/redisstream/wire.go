package redisstream

import (
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/bus"
)

// WireFormat writes and reads stream entries as this bus does: fields
// uuid, payload, key and md:<name>. It has the methods of
// watermill-redisstream's Marshaller and Unmarshaller, so that another
// Watermill Pub/Sub on the same stream (bus.driver = "watermill")
// writes and reads what this bus does.
type WireFormat struct{}

// Marshal is the entry of msg.
func (WireFormat) Marshal(_ string, msg *message.Message) (map[string]any, error) {
	v := entryValues(msg)
	m := make(map[string]any, len(v)/2)
	for i := 0; i+1 < len(v); i += 2 {
		m[v[i].(string)] = v[i+1]
	}
	return m, nil
}

// Unmarshal is the message of an entry's values. It never fails,
// because watermill-redisstream stops reading the stream at an entry it
// cannot unmarshal: an entry that is not a message becomes one that
// carries its raw fields (UndecodableMetadata), which the handler
// dead-letters.
func (WireFormat) Unmarshal(values map[string]any) (*message.Message, error) {
	d := decodeEntry("", redis.XMessage{Values: values})
	if d.uuid == "" {
		d.uuid = watermill.NewUUID()
	}
	delete(d.metadata, EntryMetadata) // the entry id is not known here
	msg := message.NewMessage(d.uuid, d.payload)
	msg.Metadata = d.metadata
	if k := d.metadata[bus.KeyMetadata]; k == "\x00entry:" || k == "\x00" {
		// decodeEntry keys by entry id and stream, both unknown here.
		msg.Metadata[bus.KeyMetadata] = "\x00" + d.uuid
	}
	return msg, nil
}
