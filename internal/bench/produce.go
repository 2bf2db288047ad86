package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/millrace/millrace/event"
)

// sendFunc sends events [from, to) of a run.
type sendFunc func(ctx context.Context, from, to int) error

// tick is the period of the steady-rate pacer: at 1,000 events/s it sends
// 5 events every 5 ms.
const tick = 5 * time.Millisecond

// pace sends n events through send and notes the first send in rec. At
// rate 0 it sends batches of batchSize back to back (saturation);
// otherwise, at each tick, the events that fell due at rate per second.
func pace(ctx context.Context, rec *recorder, n, rate int, send sendFunc) error {
	if rate <= 0 {
		for from := 0; from < n; from += batchSize {
			rec.started(time.Now())
			if err := send(ctx, from, min(from+batchSize, n)); err != nil {
				return err
			}
		}
		return nil
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	start := time.Now()
	rec.started(start)
	sent := 0
	for sent < n {
		due := min(int(time.Since(start).Seconds()*float64(rate))+1, n)
		for sent < due {
			to := min(due, sent+batchSize)
			if err := send(ctx, sent, to); err != nil {
				return err
			}
			sent = to
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// benchEntity is the entity type of the events; each event is a new row,
// so each has an entity of its own.
const benchEntity = "BenchRow"

// event returns event i of a run, stamped now, shaped as a captured
// INSERT: data holds the row (id, n, payload).
func (s *suite) event(i int, now time.Time) *event.Event {
	return &event.Event{
		ID: uuid.NewString(), Type: event.Insert, Entity: benchEntity, EntityID: strconv.Itoa(i),
		Data:      map[string]any{"id": int64(i), "n": int64(i), "payload": s.filler},
		Timestamp: now, Seq: int64(i + 1), Source: "bench",
	}
}

// encoded returns the id and the JSON envelope of event i: the bytes the
// ceilings move, the same as millrace's bus carries.
func (s *suite) encoded(i int, now time.Time) (string, []byte, error) {
	ev := s.event(i, now)
	b, err := event.Encode(ev)
	if err != nil {
		return "", nil, fmt.Errorf("encode event %d: %w", i, err)
	}
	return ev.ID, b, nil
}

// publishAsync publishes events [from, to) of a run, stamped now, to
// subject with the headers the ceilings' consumers read (id, index,
// time), and waits for their PubAcks: the JetStream ceilings' and the
// peer job's producer.
func (s *suite) publishAsync(ctx context.Context, js jetstream.JetStream, subject string, from, to int, now time.Time) error {
	for i := from; i < to; i++ {
		evID, body, err := s.encoded(i, now)
		if err != nil {
			return err
		}
		m := nats.NewMsg(subject)
		m.Data = body
		m.Header.Set(jetstream.MsgIDHeader, evID)
		m.Header.Set(hdrIndex, strconv.Itoa(i))
		m.Header.Set(hdrTime, strconv.FormatInt(now.UnixNano(), 10))
		if _, err := js.PublishMsgAsync(m); err != nil {
			return err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(30 * time.Second):
		return errors.New("no publish acks within 30s")
	}
}

// benchTable is the watched table of a capture run, in each source's
// schema.
const benchTable = "bench_rows"

// createTable creates schema and its watched table.
func createTable(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	q := pgx.Identifier{schema}.Sanitize()
	_, err := pool.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+q+"; CREATE TABLE IF NOT EXISTS "+q+"."+benchTable+
		" (id bigint PRIMARY KEY, n bigint NOT NULL, payload text NOT NULL)")
	if err != nil {
		return fmt.Errorf("create %s.%s: %w", schema, benchTable, err)
	}
	return nil
}

// copySend inserts rows [from, to) with COPY, one transaction per call:
// row i goes to the table of schema i mod len(schemas), so that several
// sources share the load.
func (s *suite) copySend(pool *pgxpool.Pool, schemas []string) sendFunc {
	return func(ctx context.Context, from, to int) error {
		rows := make([][][]any, len(schemas))
		for i := from; i < to; i++ {
			k := i % len(schemas)
			rows[k] = append(rows[k], []any{int64(i), int64(i), s.filler})
		}
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			for k, schema := range schemas {
				if len(rows[k]) == 0 {
					continue
				}
				if _, err := tx.CopyFrom(ctx, pgx.Identifier{schema, benchTable}, []string{"id", "n", "payload"},
					pgx.CopyFromRows(rows[k])); err != nil {
					return fmt.Errorf("copy into %s.%s: %w", schema, benchTable, err)
				}
			}
			return nil
		})
	}
}
