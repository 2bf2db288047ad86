package redisstream

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/millrace/millrace/bus"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/bus/partition"
)

// Metadata keys the subscriber sets on the messages it releases.
const (
	// EntryMetadata is the stream entry id of the message ("1700000000000-0").
	EntryMetadata = "millrace_entry"
	// UndecodableMetadata is set, with the reason, on a message made from
	// an entry that lacks the expected fields. Its payload is the entry's
	// raw fields as a JSON object, its UUID the entry id.
	UndecodableMetadata = "millrace_undecodable"
)

// Fields of a stream entry.
const (
	fieldUUID    = "uuid"
	fieldPayload = "payload"
	fieldKey     = "key"
	// Other metadata travels as one field per key with this prefix.
	fieldMetaPrefix = "md:"
)

// Config is the bus's config. The zero value of a field means its default.
type Config struct {
	// Prefix starts every stream name: a topic's stream is Prefix+topic.
	Prefix string
	// Group is the consumer group the subscriber reads through; every
	// process with the same Group shares the work. Default "millrace".
	Group string
	// Consumer names this process in the group and, with Partitions,
	// among the workers that lease the partitions; two live processes
	// must not share it. Keep it stable across restarts (e.g. a pod name)
	// so that a restarted process reads back its own pending entries, or
	// retakes its partitions, at once. Default "<hostname>-<pid>", and
	// with Partitions a random suffix too (see NewSubscriber).
	Consumer string
	// MaxLen caps each stream, approximately (XADD MAXLEN ~). 0: no cap.
	MaxLen int64
	// WaitReplicas, when > 0, makes a publish wait until that many
	// replicas hold its entries (WAIT after the pipeline's XADDs), and
	// fail when fewer did within WaitTimeout: Redis replicates
	// asynchronously, and a failover otherwise loses the entries the old
	// primary acknowledged last. 0: no WAIT.
	WaitReplicas int
	// WaitTimeout bounds one WAIT. Default 1s.
	WaitTimeout time.Duration
	// ClaimIdle is how long an entry may stay pending on a consumer that
	// does not touch it (a dead worker) before another claims it.
	// Default 30s.
	ClaimIdle time.Duration
	// ClaimInterval is how often the subscriber looks for such entries.
	// Default ClaimIdle/4.
	ClaimInterval time.Duration
	// Batch is the most entries one XREADGROUP returns. Default 500.
	Batch int64
	// Block is how long one XREADGROUP waits for new entries; it bounds
	// how long stopping a subscription takes. Default 500ms.
	Block time.Duration
	// MaxInFlight bounds the messages released to the router at once.
	// Default 64.
	MaxInFlight int
	// MaxBuffered bounds the messages held, in flight or queued. Default
	// 16 × MaxInFlight, and at least 2 × Batch.
	MaxBuffered int
	// DrainTimeout bounds how long Close waits for released messages to
	// settle before it cancels their contexts. Default 30s.
	DrainTimeout time.Duration
	// Partitions, when > 0, splits each topic into that many streams by
	// ordering key (PartitionStream), each read by one subscriber at a
	// time (package partition), so that the events of one key stay in
	// order across several worker processes. Every process of one topic
	// must use the same value. 0: one stream that every subscriber of
	// the group shares.
	Partitions int
	// PartitionTTL is how long a partition's lease lasts without
	// renewal: the time a dead worker's partitions wait before another
	// takes them over. Default 10s.
	PartitionTTL time.Duration
}

// SetDefaults fills the zero fields with their defaults.
func (c *Config) SetDefaults() {
	if c.Group == "" {
		c.Group = "millrace"
	}
	if c.Consumer == "" {
		c.Consumer = DefaultConsumer()
	}
	if c.ClaimIdle <= 0 {
		c.ClaimIdle = 30 * time.Second
	}
	if c.WaitTimeout <= 0 {
		c.WaitTimeout = time.Second
	}
	if c.ClaimInterval <= 0 {
		c.ClaimInterval = max(c.ClaimIdle/4, 10*time.Millisecond)
	}
	if c.Batch <= 0 {
		c.Batch = 500
	}
	if c.Block <= 0 {
		c.Block = 500 * time.Millisecond
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 64
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.PartitionTTL <= 0 {
		c.PartitionTTL = 10 * time.Second
	}
}

// DefaultConsumer is "<hostname>-<pid>".
func DefaultConsumer() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "millrace"
	}
	return fmt.Sprintf("%s-%d", h, os.Getpid())
}

// Stream returns the stream name of topic.
func (c Config) Stream(topic string) string { return c.Prefix + topic }

// PartitionStream returns the stream that holds the messages of topic
// with ordering key key: Stream(topic) when Partitions is 0, else the
// stream of key's partition, Stream(topic)+":p<k>".
func (c Config) PartitionStream(topic, key string) string {
	if c.Partitions <= 0 {
		return c.Stream(topic)
	}
	return c.partitionStream(topic, partition.Of(key, c.Partitions))
}

// Streams returns every stream that may hold messages of topic:
// Stream(topic) and, when Partitions is set, each partition's stream
// (the unpartitioned one keeps what was published before partitioning).
func (c Config) Streams(topic string) []string {
	streams := []string{c.Stream(topic)}
	for p := range max(c.Partitions, 0) {
		streams = append(streams, c.partitionStream(topic, p))
	}
	return streams
}

func (c Config) partitionStream(topic string, p int) string {
	return c.Stream(topic) + ":p" + strconv.Itoa(p)
}

// leasePrefix starts the keys of the partition leases of topic for the
// group: each group spreads the partitions over its own workers.
func (c Config) leasePrefix(topic string) string {
	return c.Stream(topic) + ":leases:" + c.Group + ":"
}

// streamOf is the stream msg is appended to: its partition's, by
// bus.PartitionKey.
func (c Config) streamOf(topic string, msg *message.Message) string {
	return c.PartitionStream(topic, bus.PartitionKey(msg))
}

// entryValues encodes msg as the field/value list of one XADD.
func entryValues(msg *message.Message) []any {
	v := make([]any, 0, 4+2*len(msg.Metadata))
	v = append(v, fieldUUID, msg.UUID, fieldPayload, []byte(msg.Payload))
	for k, val := range msg.Metadata {
		switch k {
		case bus.KeyMetadata:
			v = append(v, fieldKey, val)
		case bus.SubjectMetadata, bus.RetryDelayMetadata, EntryMetadata, bus.DeliveryMetadata, UndecodableMetadata:
			// Local to one delivery, or meaningful on JetStream only.
		default:
			v = append(v, fieldMetaPrefix+k, val)
		}
	}
	return v
}

// decoded is one stream entry made into a message.
type decoded struct {
	uuid     string
	payload  []byte
	key      string
	metadata message.Metadata
}

// decodeEntry turns an entry into message parts. An entry without a
// string uuid and payload, or with a non-string field, becomes a message
// carrying its raw fields, keyed by its own id so it holds up nothing.
func decodeEntry(stream string, e redis.XMessage) decoded {
	d := decoded{metadata: message.Metadata{EntryMetadata: e.ID}}
	var problems []string
	for k, raw := range e.Values {
		s, ok := raw.(string)
		if !ok {
			problems = append(problems, fmt.Sprintf("field %q is a %T, not a string", k, raw))
			continue
		}
		switch {
		case k == fieldUUID:
			d.uuid = s
		case k == fieldPayload:
			d.payload = []byte(s)
		case k == fieldKey:
			d.key = s
		case strings.HasPrefix(k, fieldMetaPrefix):
			d.metadata[k[len(fieldMetaPrefix):]] = s
		}
	}
	if _, ok := e.Values[fieldPayload]; !ok {
		problems = append(problems, "no payload field")
	}
	if d.uuid == "" {
		problems = append(problems, "no uuid field")
	}
	if len(problems) == 0 {
		if d.key == "" {
			// Messages published without an ordering key keep the
			// stream's order among themselves.
			d.key = "\x00" + stream
		}
		d.metadata[bus.KeyMetadata] = d.key
		return d
	}
	sort.Strings(problems)
	raw, err := json.Marshal(e.Values)
	if err != nil {
		raw = []byte(fmt.Sprintf("%q", fmt.Sprint(e.Values)))
	}
	return decoded{
		uuid:    e.ID,
		payload: raw,
		key:     "\x00entry:" + e.ID,
		metadata: message.Metadata{
			EntryMetadata:       e.ID,
			UndecodableMetadata: strings.Join(problems, "; "),
			bus.KeyMetadata:     "\x00entry:" + e.ID,
		},
	}
}

func (c Config) maxBuffered() int {
	if c.MaxBuffered > 0 {
		return max(c.MaxBuffered, c.MaxInFlight)
	}
	return max(16*c.MaxInFlight, 2*int(c.Batch))
}
