package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/bus/capture"
	"github.com/millrace/millrace/event"
)

// topic is the bus topic of change events (router.topic's default; the
// example configs keep it).
const topic = "events"

// PublishRaw puts payload straight onto the rig's bus, as a producer
// that bypasses millrace would. id becomes the message id (Nats-Msg-Id,
// the stream entry's uuid field; a fresh one when empty) and key the
// ordering key (empty: the bus's default). On JetStream the subject is
// <subject_prefix>.events.raw, or <subject_prefix>.events.0.raw with
// partitions. The change-log bus has no raw form: use
// InsertChangeLog.
func (r *Rig) PublishRaw(t testing.TB, id, key string, payload []byte) {
	t.Helper()
	if id == "" {
		id = uuid.NewString()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	switch r.Bus {
	case BusEmbedded, BusJetStream:
		js, prefix, done := r.jetStream(t)
		defer done()
		subject := prefix + "." + topic + ".raw"
		if r.Partitions > 0 {
			// The stream takes only partition subjects; any partition
			// will do for a producer that does not care about order.
			subject = prefix + "." + topic + ".0.raw"
		}
		m := nats.NewMsg(subject)
		m.Data = payload
		m.Header.Set(jetstream.MsgIDHeader, id)
		if key != "" {
			m.Header.Set("Millrace-Key", key)
		}
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatalf("e2e: publish %d bytes to %s: %v", len(payload), m.Subject, err)
		}
	case BusRedis:
		fields := []any{"uuid", id, "payload", payload}
		if key != "" {
			fields = append(fields, "key", key)
		}
		r.RedisEntry(t, fields...)
	default:
		t.Fatalf("e2e: PublishRaw on the %s: use InsertChangeLog", r.Bus)
	}
}

// Redeliver puts a copy of ev on the rig's bus under a new message id,
// as a replay or a producer that sends twice would: no bus-level dedup
// (Nats-Msg-Id, the change log's unique id) recognises it, only the
// router's, which goes by the event id. On JetStream and Redis the copy
// is published raw with ev's ordering key; on the change log it is a row
// of its own carrying the event id in its metadata, as a dead-letter
// replay writes it.
func (r *Rig) Redeliver(t testing.TB, ev *event.Event) {
	t.Helper()
	if r.Bus != BusChangeLog {
		payload, err := event.Encode(ev)
		if err != nil {
			t.Fatalf("e2e: encode event %s: %v", ev.ID, err)
		}
		r.PublishRaw(t, uuid.NewString(), ev.Key(), payload)
		return
	}
	data, err := json.Marshal(ev.Data)
	if err != nil {
		t.Fatalf("e2e: event %s: data: %v", ev.ID, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = r.InsertChangeLog(ctx, map[string]any{
		"id": uuid.NewString(), "op": string(ev.Type), "entity_type": ev.Entity, "entity_id": ev.EntityID,
		"after_image": string(data), "metadata": `{"` + capture.EventIDMetadata + `": "` + ev.ID + `"}`,
	})
	if err != nil {
		t.Fatalf("e2e: a copy of event %s into the change log: %v", ev.ID, err)
	}
}

// jetStream returns a JetStream handle on the rig's bus and its subject
// prefix; done closes what it opened.
func (r *Rig) jetStream(t testing.TB) (jetstream.JetStream, string, func()) {
	t.Helper()
	if r.Bus == BusJetStream {
		return r.JS, r.SubjectPrefix, func() {}
	}
	nc, err := nats.Connect(r.EmbeddedURL, nats.Timeout(10*time.Second))
	if err != nil {
		t.Fatalf("e2e: connect to the embedded NATS server at %s: %v", r.EmbeddedURL, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		t.Fatalf("e2e: %v", err)
	}
	// The embedded topology's fixed stream and subjects.
	return js, "millrace", nc.Close
}

// RedisEntry appends an entry with the given field/value pairs to the
// rig's event stream (XADD <key_prefix>events).
func (r *Rig) RedisEntry(t testing.TB, fields ...any) {
	t.Helper()
	if r.Bus != BusRedis {
		t.Fatalf("e2e: RedisEntry on the %s", r.Bus)
	}
	err := r.Redis.XAdd(context.Background(), &redis.XAddArgs{Stream: r.RedisPrefix + topic, Values: fields}).Err()
	if err != nil {
		t.Fatalf("e2e: XADD %s%s: %v", r.RedisPrefix, topic, err)
	}
}

// ChangeLogSchema is the schema whose change log carries the rig's
// events on the change-log bus: the first source's, or the stores'.
func (r *Rig) ChangeLogSchema() (string, *Source) {
	if len(r.Sources) > 0 {
		return r.Sources[0].Schema, r.Sources[0]
	}
	return r.StoreSchema, nil
}

// InsertChangeLog appends a row to the change log, as an application
// writing its own outbox would; cols are column values (id, op,
// entity_type, entity_id, after_image, ...). It returns the database's
// error, such as a constraint the row breaks.
func (r *Rig) InsertChangeLog(ctx context.Context, cols map[string]any) error {
	schema, _ := r.ChangeLogSchema()
	pool := r.StorePool
	if len(r.Sources) > 0 {
		pool = r.Sources[0].Pool
	}
	if pool == nil {
		return fmt.Errorf("e2e: the %s topology has no change log", r.Topology)
	}
	names := make([]string, 0, len(cols))
	for k := range cols {
		names = append(names, k)
	}
	sort.Strings(names)
	args := make([]any, len(names))
	ph := make([]string, len(names))
	for i, k := range names {
		args[i] = cols[k]
		ph[i] = fmt.Sprintf("$%d", i+1)
		names[i] = pgx.Identifier{k}.Sanitize()
	}
	q := "INSERT INTO " + pgx.Identifier{schema, "change_log"}.Sanitize() +
		" (" + strings.Join(names, ", ") + ") VALUES (" + strings.Join(ph, ", ") + ")"
	_, err := pool.Exec(ctx, q, args...)
	return err
}
