package wal

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/bus/backfill"
	"github.com/millrace/millrace/bus/capture"
	"github.com/millrace/millrace/event"
)

// BackfillPrefix is the prefix of the transactional logical messages
// (pg_logical_emit_message(true, 'millrace.backfill', content)) whose
// rows become READ events; the content is a backfill.Message.
const BackfillPrefix = backfill.MessagePrefix

// idNamespace derives the event ids from (source, LSN, position), so a
// change decoded again after a crash has the id of its first delivery.
var idNamespace = uuid.MustParse("0f6a53b8-58a4-4d7e-8c55-2c3c8f4a6d11")

// relation is a published table as the stream last described it.
type relation struct {
	table  string // "schema.table"
	entity string
	cols   []*pglogrepl.RelationMessageColumn
	key    []int // the primary-key columns, by index in cols
}

// keyLookup finds a table's primary-key columns ("schema.table").
type keyLookup func(ctx context.Context, table string) ([]string, error)

// decoder turns pgoutput messages into bus messages. It is used by one
// goroutine.
type decoder struct {
	cfg  *Config
	keys keyLookup
	rels map[uint32]*relation

	// The transaction being decoded.
	commitLSN  pglogrepl.LSN
	commitTime time.Time
	xid        uint32 // of the transaction being decoded (32 bits, without the epoch)
	index      int    // changes of the transaction so far

	// Scratch space of change, reused from one change to the next: the
	// images and the data object are copied into the message's payload,
	// so nothing outlives the call that fills them.
	before, after scratch
	byIndex       []field
	data          []byte
	idBuf         []byte
}

// scratch is the reusable storage of one row image.
type scratch struct {
	buf    []byte
	fields []field
}

// The scratch a decoder keeps between changes is bounded: a buffer
// grown past these lengths by a large row is let go.
const (
	maxScratchBytes  = 64 << 10
	maxScratchFields = 1 << 10
)

// keep returns s emptied for reuse, or nil past max elements.
func keep[T any](s []T, max int) []T {
	if cap(s) > max {
		return nil
	}
	return s[:0]
}

func newDecoder(cfg *Config, keys keyLookup) *decoder {
	return &decoder{cfg: cfg, keys: keys, rels: map[uint32]*relation{}}
}

// entity is the entity type of table, from the entities map as Watch
// reads it: the name as configured or as schema.table, else the table
// name without its schema.
func (d *decoder) entity(table string) string {
	if e := d.cfg.Entities[table]; e != "" {
		return e
	}
	if i := strings.IndexByte(table, '.'); i >= 0 {
		if e := d.cfg.Entities[table[i+1:]]; e != "" {
			return e
		}
		return table[i+1:]
	}
	return table
}

// relation updates the cache from a Relation message: the stream sends
// one before the first change of a table and again after its shape
// changed (an added column), so the cache follows ALTER TABLE.
func (d *decoder) relation(ctx context.Context, m *pglogrepl.RelationMessage) error {
	r := &relation{table: m.Namespace + "." + m.RelationName, cols: m.Columns}
	r.entity = d.entity(r.table)
	// With REPLICA IDENTITY FULL every column is flagged as key: the
	// primary key comes from the catalog.
	names, err := d.keys(ctx, r.table)
	switch {
	case errors.Is(err, errNoTable):
		// Dropped since: its changes are still decoded, without a key.
		names = nil
	case err != nil:
		return fmt.Errorf("relation %s: primary key: %w", r.table, err)
	}
	for _, n := range names {
		for i, c := range r.cols {
			if c.Name == n {
				r.key = append(r.key, i)
			}
		}
	}
	d.rels[m.RelationID] = r
	return nil
}

func (d *decoder) begin(m *pglogrepl.BeginMessage) {
	d.commitLSN, d.commitTime, d.index, d.xid = m.FinalLSN, m.CommitTime, 0, m.Xid
}

// field is one column of an image: its name and JSON value.
type field struct {
	name  string
	value []byte
}

// image converts a tuple into s; unchanged TOAST values ('u') are taken
// from old when it has them (REPLICA IDENTITY FULL), and left out
// otherwise. The values share one buffer: each field's value is a
// capped slice of it, which stays valid when a later append moves the
// buffer. The fields are valid until s is used again.
func image(r *relation, t *pglogrepl.TupleData, old []field, s *scratch) []field {
	if t == nil {
		return nil
	}
	buf, out := keep(s.buf, maxScratchBytes), keep(s.fields, maxScratchFields)
	for i, c := range t.Columns {
		if i >= len(r.cols) {
			break
		}
		col := r.cols[i]
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			out = append(out, field{col.Name, null})
		case pglogrepl.TupleDataTypeText:
			start := len(buf)
			buf = appendValue(buf, col.DataType, c.Data)
			out = append(out, field{col.Name, buf[start:len(buf):len(buf)]})
		case pglogrepl.TupleDataTypeToast:
			if i < len(old) && old[i].name == col.Name && old[i].value != nil {
				out = append(out, old[i])
			}
		}
	}
	s.buf, s.fields = buf, out
	return out
}

var null = []byte("null")

// indexed returns fields by column position (nil where a column is
// missing), for image's TOAST lookup, in dst's storage.
func indexed(r *relation, fs []field, dst []field) []field {
	out := append(keep(dst, maxScratchFields), make([]field, len(r.cols))...)
	j := 0
	for i, c := range r.cols {
		if j < len(fs) && fs[j].name == c.Name {
			out[i] = fs[j]
			j++
		}
	}
	return out
}

// object appends fields to b as a JSON object, in column order.
func object(b []byte, fs []field) json.RawMessage {
	b = append(b, '{')
	for i, f := range fs {
		if i > 0 {
			b = append(b, ',')
		}
		b = event.AppendString(b, f.name)
		b = append(b, ':')
		b = append(b, f.value...)
	}
	return append(b, '}')
}

// changes encodes the changed, added (old null) and removed (new null)
// fields of an UPDATE as {field: {old, new}}, ordered by name, values
// compared as the trigger capture compares them (capture.SameJSON); nil
// when nothing changed.
func changes(before, after []field) json.RawMessage {
	type change struct {
		name     string
		old, new []byte
	}
	var out []change
	find := func(fs []field, name string) ([]byte, bool) {
		for _, f := range fs {
			if f.name == name {
				return f.value, true
			}
		}
		return nil, false
	}
	for _, a := range after {
		o, ok := find(before, a.name)
		switch {
		case !ok:
			out = append(out, change{a.name, null, a.value})
		case !capture.SameJSON(o, a.value):
			out = append(out, change{a.name, o, a.value})
		}
	}
	for _, o := range before {
		if _, ok := find(after, o.name); !ok {
			out = append(out, change{o.name, o.value, null})
		}
	}
	slices.SortFunc(out, func(x, y change) int { return strings.Compare(x.name, y.name) })
	size := 2
	for _, c := range out {
		size += len(c.name) + len(c.old) + len(c.new) + 20
	}
	b := append(make([]byte, 0, size), '{')
	for i, c := range out {
		if i > 0 {
			b = append(b, ',')
		}
		b = event.AppendString(b, c.name)
		b = append(b, `:{"old":`...)
		b = append(b, c.old...)
		b = append(b, `,"new":`...)
		b = append(b, c.new...)
		b = append(b, '}')
	}
	return append(b, '}')
}

// entityID joins the primary-key values as `img ->> column` gives them
// (strings unquoted, other JSON as written), with ':' between columns.
func entityID(r *relation, fs []field) string {
	var parts []string
	for _, k := range r.key {
		name := r.cols[k].Name
		for _, f := range fs {
			if f.name != name {
				continue
			}
			if s, ok := keyText(f.value); ok {
				parts = append(parts, s)
			}
		}
	}
	return strings.Join(parts, ":")
}

// keyText is a key column's JSON value as `->>` gives it: a string
// unquoted, any other value as written; ok is false for null or none.
func keyText(v []byte) (string, bool) {
	if len(v) == 0 || string(v) == "null" {
		return "", false
	}
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		if inner := v[1 : len(v)-1]; bytes.IndexByte(inner, '\\') < 0 {
			return string(inner), true
		}
		var s string
		if json.Unmarshal(v, &s) == nil {
			return s, true
		}
	}
	return string(v), true
}

// id is the event id of the change at index in the transaction that
// commits at lsn.
func (d *decoder) id(kind string, lsn pglogrepl.LSN, index int) string {
	// uuid.NewSHA1(idNamespace, "<source>\0<kind>\0<lsn>\0<index>"),
	// without its hash object and buffers per change.
	b := append(d.idBuf[:0], idNamespace[:]...)
	b = append(append(b, d.cfg.Source...), 0)
	b = append(append(b, kind...), 0)
	b = append(strconv.AppendUint(b, uint64(lsn), 10), 0)
	b = strconv.AppendInt(b, int64(index), 10)
	sum := sha1.Sum(b)
	d.idBuf = keep(b, maxScratchBytes)
	var id uuid.UUID
	copy(id[:], sum[:])
	id[6] = id[6]&0x0f | 0x50 // version 5
	id[8] = id[8]&0x3f | 0x80 // RFC 4122 variant
	return id.String()
}

// change builds the message of an INSERT, UPDATE or DELETE.
func (d *decoder) change(typ event.Type, relID uint32, oldType uint8, oldT, newT *pglogrepl.TupleData) (*message.Message, error) {
	r, ok := d.rels[relID]
	if !ok {
		return nil, fmt.Errorf("%s of relation %d before its Relation message", typ, relID)
	}
	index := d.index
	d.index++
	old := image(r, oldT, nil, &d.before)
	ev := &event.Envelope{
		ID: d.id("change", d.commitLSN, index), Type: typ, Entity: r.entity,
		Timestamp: d.commitTime.UTC(), Seq: int64(d.commitLSN), Source: d.cfg.Source,
	}
	switch typ {
	case event.Delete:
		d.data = object(keep(d.data, maxScratchBytes), old)
		ev.Data, ev.EntityID = d.data, entityID(r, old)
	default:
		d.byIndex = indexed(r, old, d.byIndex)
		after := image(r, newT, d.byIndex, &d.after)
		d.data = object(keep(d.data, maxScratchBytes), after)
		ev.Data, ev.EntityID = d.data, entityID(r, after)
		if typ == event.Update && oldType == 'O' {
			ev.Changes = changes(old, after)
		}
	}
	msg := d.message(ev, "")
	msg.Metadata.Set(bus.XIDMetadata, strconv.FormatUint(uint64(d.xid), 10))
	return msg, nil
}

func (d *decoder) message(ev *event.Envelope, observer string) *message.Message {
	msg := message.NewMessage(ev.ID, ev.AppendJSON(make([]byte, 0, 256+len(ev.Data)+len(ev.Changes))))
	bus.Route(msg, ev.Source, ev.Entity, ev.EntityID, "", ev.Type)
	if observer != "" {
		msg.Metadata.Set(bus.ObserverMetadata, observer)
	}
	return msg
}

// backfill builds the READ events of a BackfillPrefix message, one per
// row, with ids from the message's LSN and the row's index. A message
// for another publication gives none: every slot of the database
// decodes it, and it is for the capture that reads that publication.
func (d *decoder) backfill(ctx context.Context, m *pglogrepl.LogicalDecodingMessage) ([]*message.Message, error) {
	var c backfill.Message
	if err := json.Unmarshal(m.Content, &c); err != nil {
		return nil, fmt.Errorf("%s message at %s: content: %w", BackfillPrefix, m.LSN, err)
	}
	if c.Publication != d.cfg.Publication {
		return nil, nil
	}
	if c.Table == "" {
		return nil, fmt.Errorf("%s message at %s: table is required", BackfillPrefix, m.LSN)
	}
	key, err := d.keys(ctx, c.Table)
	if err != nil {
		return nil, fmt.Errorf("%s message at %s: table %s: %w", BackfillPrefix, m.LSN, c.Table, err)
	}
	entity := d.entity(c.Table)
	seq, ts := int64(d.commitLSN), d.commitTime
	if !m.Transactional || d.commitLSN == 0 {
		seq, ts = int64(m.LSN), time.Now()
	}
	out := make([]*message.Message, 0, len(c.Rows))
	for i, row := range c.Rows {
		var cols map[string]json.RawMessage
		if err := json.Unmarshal(row, &cols); err != nil {
			return nil, fmt.Errorf("%s message at %s: row %d is not an object: %w", BackfillPrefix, m.LSN, i, err)
		}
		var parts []string
		for _, k := range key {
			if s, ok := keyText(cols[k]); ok {
				parts = append(parts, s)
			}
		}
		ev := &event.Envelope{
			ID: d.id("read", m.LSN, i), Type: event.Read, Entity: entity, EntityID: strings.Join(parts, ":"),
			Data: row, Timestamp: ts.UTC(), Seq: seq, Source: d.cfg.Source,
		}
		out = append(out, d.message(ev, c.Observer))
	}
	return out, nil
}

// undecodable is the message of something that could not be decoded: the
// router's decoder dead-letters it with the reason, so that it leaves a
// trace instead of being dropped here or stopping the capture.
func (d *decoder) undecodable(kind string, lsn pglogrepl.LSN, index int, err error) *message.Message {
	id := d.id(kind, lsn, index)
	body, _ := json.Marshal(map[string]any{"id": id, "error": err.Error(), "lsn": lsn.String(), "source": d.cfg.Source})
	msg := message.NewMessage(id, body)
	msg.Metadata.Set(bus.KeyMetadata, event.KeyOf(d.cfg.Source, "", ""))
	return msg
}

var errNoTable = errors.New("no such table")
