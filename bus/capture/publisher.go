package capture

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/millrace/millrace/bus"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/event"
)

// publishTimeout bounds one Publish call.
const publishTimeout = 30 * time.Second

// Publisher appends events to the change log, where Subscribers read them
// like captured changes: HTTP ingest and the publish action use it on the
// postgres topology. Each message's payload must be an event envelope
// (event.Decode); its id becomes the change id. An id already in the log
// is not stored again, so republishing is idempotent.
type Publisher struct {
	pool   *pgxpool.Pool
	insert string
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher returns a publisher into schema's change log (see Migrate).
// It does not own the pool.
func NewPublisher(pool *pgxpool.Pool, schema string) *Publisher {
	return &Publisher{pool: pool, insert: `INSERT INTO ` + ident(schema) + `.change_log
	(id, op, entity_type, entity_id, after_image, before_image, changes, user_id, tenant_id, created_at, source, seq, metadata)
SELECT u.id::uuid, u.op, u.entity_type, u.entity_id, u.after_image::jsonb, u.before_image::jsonb, u.changes::jsonb,
	u.user_id, u.tenant_id, coalesce(u.created_at, clock_timestamp()), u.source, u.seq, u.metadata::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
	$9::text[], $10::timestamptz[], $11::text[], $12::bigint[], $13::text[])
	AS u(id, op, entity_type, entity_id, after_image, before_image, changes, user_id, tenant_id, created_at, source, seq, metadata)
ON CONFLICT (id) DO NOTHING`}
}

// Publish stores msgs in one statement (all or none). The topic is not
// used: a database has one change log per schema.
func (p *Publisher) Publish(_ string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	n := len(msgs)
	var (
		ids, ops, entities, entityIDs = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		afters, befores, changes      = make([]*string, n), make([]*string, n), make([]*string, n)
		users, tenants, sources, mds  = make([]*string, n), make([]*string, n), make([]*string, n), make([]*string, n)
		times                         = make([]*time.Time, n)
		seqs                          = make([]*int64, n)
	)
	var errs []error
	for i, m := range msgs {
		ev, err := event.Decode(m.Payload)
		if err != nil {
			errs = append(errs, fmt.Errorf("message %s: %w", m.UUID, err))
			continue
		}
		ids[i], ops[i], entities[i], entityIDs[i] = ev.ID, string(ev.Type), ev.Entity, ev.EntityID
		md := map[string]string{}
		// A message whose id is not its event's (a dead-letter replay)
		// gets a row of its own, which the change log's unique id would
		// otherwise drop; the event keeps its id through EventIDMetadata.
		if m.UUID != ev.ID && uuid.Validate(m.UUID) == nil {
			ids[i] = m.UUID
			md[EventIDMetadata] = ev.ID
		}
		data, err := json.Marshal(ev.Data)
		if err != nil {
			errs = append(errs, fmt.Errorf("message %s: data: %w", m.UUID, err))
			continue
		}
		if ev.Type == event.Delete {
			befores[i] = ptr(string(data))
		} else {
			afters[i] = ptr(string(data))
		}
		if ev.Changes != nil {
			b, err := json.Marshal(ev.Changes)
			if err != nil {
				errs = append(errs, fmt.Errorf("message %s: changes: %w", m.UUID, err))
				continue
			}
			changes[i] = ptr(string(b))
		}
		users[i], tenants[i], sources[i] = nonEmpty(ev.UserID), nonEmpty(ev.TenantID), nonEmpty(ev.Source)
		if !ev.Timestamp.IsZero() {
			times[i] = &ev.Timestamp
		}
		if ev.Seq != 0 {
			seqs[i] = &ev.Seq
		}
		for k, v := range m.Metadata {
			switch k {
			case bus.KeyMetadata, bus.SubjectMetadata, bus.RetryDelayMetadata, bus.DeliveryMetadata:
			default:
				md[k] = v
			}
		}
		if len(md) > 0 {
			b, _ := json.Marshal(md)
			mds[i] = ptr(string(b))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("capture: publish: %w", errors.Join(errs...))
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(msgs[0].Context()), publishTimeout)
	defer cancel()
	if _, err := p.pool.Exec(ctx, p.insert, ids, ops, entities, entityIDs, afters, befores, changes,
		users, tenants, times, sources, seqs, mds); err != nil {
		return fmt.Errorf("capture: publish: %w", err)
	}
	return nil
}

// Close does nothing: the pool belongs to the caller.
func (p *Publisher) Close() error { return nil }

func ptr[T any](v T) *T { return &v }

func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
