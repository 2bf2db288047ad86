package jetstream

import (
	"strings"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/millrace/millrace/bus"
)

// WireFormat writes and reads messages as this bus does (docs/bus.md):
// subject "<prefix>.<topic>[.<partition>].<suffix>", Nats-Msg-Id
// "<topic>:<uuid>", Millrace-Uuid, Millrace-Key and Millrace-Md-<name>
// headers. It has the methods of watermill-nats's Marshaler and
// Unmarshaler, so that another Watermill Pub/Sub on the same stream
// (bus.driver = "watermill") writes and reads what this bus does, and a
// producer that follows docs/bus.md works with either.
type WireFormat struct{ Config Config }

// Marshal is the message of m on topic.
func (w WireFormat) Marshal(topic string, m *message.Message) (*nats.Msg, error) {
	return w.Config.natsMsg(topic, m), nil
}

// Unmarshal is the message of nm. It never fails: a message without
// Millrace-Uuid takes its Nats-Msg-Id, or a new UUID, and a payload
// that is not an event reaches the handler, which dead-letters it.
// Without Millrace-Key the key comes from the envelope, as for the
// millrace driver, or is the subject.
func (WireFormat) Unmarshal(nm *nats.Msg) (*message.Message, error) {
	id := nm.Header.Get(uuidHeader)
	if id == "" {
		id = nm.Header.Get(jetstream.MsgIDHeader)
	}
	if id == "" {
		id = watermill.NewUUID()
	}
	msg := message.NewMessage(id, nm.Data)
	key := nm.Header.Get(keyHeader)
	if key == "" {
		var ok bool
		if key, ok = bus.KeyFromPayload(nm.Data); !ok {
			key = nm.Subject
		}
	}
	msg.Metadata.Set(bus.KeyMetadata, key)
	setMetadata(msg, nm)
	return msg, nil
}

// natsMsg is the message of m on topic: subject, headers and payload.
func (c Config) natsMsg(topic string, m *message.Message) *nats.Msg {
	// The header map is sized once and its values share one array: a
	// message is written per change, and these were most of its
	// allocations. The names are canonical already (nats.Header.Set
	// would not change them).
	n := 2 + len(m.Metadata)
	h, vals := make(nats.Header, n), make([]string, 0, n)
	add := func(k, v string) {
		vals = append(vals, v)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	// The duplicate window is stream-wide; the topic in the id keeps
	// the same message on two topics from being dropped as one.
	add(jetstream.MsgIDHeader, topic+":"+m.UUID)
	add(uuidHeader, m.UUID)
	for k, v := range m.Metadata {
		switch k {
		case bus.KeyMetadata:
			add(keyHeader, v)
		case bus.SubjectMetadata, bus.RetryDelayMetadata:
		default:
			add(metaPrefix+k, v)
		}
	}
	subject := c.PartitionSubject(topic, bus.PartitionKey(m), m.Metadata.Get(bus.SubjectMetadata))
	return &nats.Msg{Subject: subject, Header: h, Data: m.Payload}
}

// setMetadata copies the Millrace-Md- headers of nm onto msg, and the
// number of this delivery (bus.DeliveryMetadata) when nm came from a
// consumer.
func setMetadata(msg *message.Message, nm *nats.Msg) {
	for k, v := range nm.Header {
		if strings.HasPrefix(k, metaPrefix) && len(v) > 0 {
			msg.Metadata.Set(k[len(metaPrefix):], v[0])
		}
	}
	if _, delivered, ok := replyNumber(nm.Reply, ackDeliveredToken); ok {
		msg.Metadata.Set(bus.DeliveryMetadata, delivered)
	}
}
