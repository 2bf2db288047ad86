package backfill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/millrace/millrace/bus"
)

// Capture modes an Emitter writes for.
const (
	// ModeTrigger writes READ rows into the change log that the capture
	// triggers fill.
	ModeTrigger = "trigger"
	// ModeWAL writes logical decoding messages into the write-ahead log.
	ModeWAL = "wal"
)

// MessagePrefix is the prefix of the logical decoding messages the WAL
// emitter writes; their content is a Message.
const MessagePrefix = "millrace.backfill"

// Message is the content of one WAL backfill message: one page of one
// table, as JSON. It is the contract with the WAL capture reader, which
// turns each row into a READ event.
type Message struct {
	// Publication is the publication of the capture the page is for.
	// Every logical replication slot of the database decodes every
	// message, so a WAL reader of another publication (another source or
	// another deployment on the same database) skips the message.
	Publication string `json:"publication"`
	// Table is "schema.table", unquoted.
	Table string `json:"table"`
	// Observer, when not empty, is the only observer the events are for
	// (bus.ObserverMetadata).
	Observer string `json:"observer"`
	// Rows are the rows of the page, each as row_to_json gives it.
	Rows []json.RawMessage `json:"rows"`
}

// Page is one page of rows, read under FOR SHARE in the transaction the
// Emitter writes in.
type Page struct {
	// Table is the table, "schema.table" unquoted.
	Table string
	// Entity is the entity type of the table's events.
	Entity string
	// Observer, when not empty, is the only observer the events are for.
	Observer string
	// RunID identifies the backfill run; event ids derive from it and the
	// entity id.
	RunID uuid.UUID
	// Rows are the rows in primary-key order.
	Rows []Row
}

// Row is one row of a page.
type Row struct {
	// Image is the row as row_to_json gives it.
	Image json.RawMessage
	// EntityID is the primary key as text, composite keys joined with
	// ':', as the capture trigger writes it.
	EntityID string
}

// idNamespace derives the event ids of READ events.
var idNamespace = uuid.MustParse("8f7a4c1e-2b6d-4e0a-9c35-d1e2f3a4b5c6")

// EventID is the id of the READ event of the row with entityID in run: a
// row emitted twice by one run keeps its id, and the buses and the dedup
// layer drop the copy; a new run (--restart) gets new ids.
func EventID(run uuid.UUID, entityID string) uuid.UUID {
	return uuid.NewSHA1(idNamespace, append(run[:], entityID...))
}

// Emitter writes one page of READ events into the capture stream, inside
// tx: they become visible to capture when tx commits, and not at all when
// it rolls back.
type Emitter interface {
	Emit(ctx context.Context, tx pgx.Tx, p *Page) error
}

// NewEmitter returns the Emitter of capture mode (ModeTrigger or ModeWAL);
// schema is the capture schema holding the change log (trigger mode),
// publication the publication the WAL capture reads (WAL mode).
func NewEmitter(mode, schema, publication string) (Emitter, error) {
	switch mode {
	case ModeTrigger:
		return NewTriggerEmitter(schema), nil
	case ModeWAL:
		if publication == "" {
			return nil, errors.New("backfill: WAL mode needs the capture's publication")
		}
		return WALEmitter{Publication: publication}, nil
	}
	return nil, fmt.Errorf("backfill: capture mode %q is not %s or %s", mode, ModeTrigger, ModeWAL)
}

// TriggerEmitter appends READ rows to the change log, where the capture
// reader reads them in position order with the changes the triggers
// write. The observer, when set, goes into the row's metadata as
// bus.ObserverMetadata.
type TriggerEmitter struct {
	insert string
}

// NewTriggerEmitter returns an emitter into schema's change log.
func NewTriggerEmitter(schema string) *TriggerEmitter {
	return &TriggerEmitter{insert: `INSERT INTO ` + pgx.Identifier{schema}.Sanitize() + `.change_log
	(id, op, entity_type, entity_id, source_table, after_image, metadata)
SELECT u.id, 'READ', $4, u.entity_id, $5, u.img::jsonb, $6::jsonb
FROM unnest($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY AS u(id, entity_id, img, ord)
ORDER BY u.ord
ON CONFLICT (id) DO NOTHING`}
}

// Emit inserts one change-log row per row of p, in key order.
func (e *TriggerEmitter) Emit(ctx context.Context, tx pgx.Tx, p *Page) error {
	ids := make([]uuid.UUID, len(p.Rows))
	eids := make([]string, len(p.Rows))
	imgs := make([]string, len(p.Rows))
	for i, r := range p.Rows {
		ids[i], eids[i], imgs[i] = EventID(p.RunID, r.EntityID), r.EntityID, string(r.Image)
	}
	var md *string
	if p.Observer != "" {
		b, err := json.Marshal(map[string]string{bus.ObserverMetadata: p.Observer})
		if err != nil {
			return err
		}
		s := string(b)
		md = &s
	}
	if _, err := tx.Exec(ctx, e.insert, ids, eids, imgs, p.Entity, p.Table, md); err != nil {
		return fmt.Errorf("append to the change log: %w", err)
	}
	return nil
}

// WALEmitter writes each page as one transactional logical decoding
// message (pg_logical_emit_message) with prefix MessagePrefix and a
// Message as content.
type WALEmitter struct {
	// Publication names the capture the messages are for: the WAL
	// readers of other publications skip them.
	Publication string
}

// Emit writes p as one message.
func (e WALEmitter) Emit(ctx context.Context, tx pgx.Tx, p *Page) error {
	m := Message{Publication: e.Publication, Table: p.Table, Observer: p.Observer, Rows: make([]json.RawMessage, len(p.Rows))}
	for i, r := range p.Rows {
		m.Rows[i] = r.Image
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode the message: %w", err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_logical_emit_message(true, $1::text, $2::text)", MessagePrefix, string(b)); err != nil {
		return fmt.Errorf("emit the logical decoding message: %w", err)
	}
	return nil
}
