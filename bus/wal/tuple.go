package wal

import (
	"encoding/binary"
	"fmt"

	"github.com/jackc/pglogrepl"
)

// rowChange is a pgoutput Insert, Update or Delete message, decoded by
// read into storage it reuses: its tuples' values point into the
// WAL message and are valid until the next message is received. A
// change is one message per row, and pglogrepl.Parse allocated the
// message, each tuple and each column and copied each value, about a
// dozen allocations a row; image copies what it keeps.
type rowChange struct {
	op      byte // 'I', 'U' or 'D'
	relID   uint32
	oldType byte // 'K', 'O' or 0
	old     *pglogrepl.TupleData
	new     *pglogrepl.TupleData

	oldTuple, newTuple tuple
}

// tuple is a TupleData with its columns' storage.
type tuple struct {
	data pglogrepl.TupleData
	cols []pglogrepl.TupleDataColumn
}

// isRowChange says whether rowChange.read decodes the message in src.
func isRowChange(src []byte) bool {
	return len(src) > 0 && (src[0] == 'I' || src[0] == 'U' || src[0] == 'D')
}

// read decodes the row change in src (protocol version 1, as
// pglogrepl.Parse does) into c.
func (c *rowChange) read(src []byte) error {
	// An insert has at least one column (pglogrepl's bound too); the
	// others at least a tuple type.
	if len(src) < 6 || src[0] == 'I' && len(src) < 9 {
		return fmt.Errorf("%q message of %d bytes", src[:min(len(src), 1)], len(src))
	}
	c.op, c.relID, c.oldType, c.old, c.new = src[0], binary.BigEndian.Uint32(src[1:5]), 0, nil, nil
	p := src[5:]
	kind := p[0]
	var err error
	if kind == 'K' || kind == 'O' {
		if c.op == 'I' {
			return fmt.Errorf("insert message with an old tuple (%q)", kind)
		}
		c.oldType = kind
		if p, err = c.oldTuple.read(p[1:]); err != nil {
			return fmt.Errorf("%c message, old tuple: %w", c.op, err)
		}
		c.old = &c.oldTuple.data
		if c.op == 'D' {
			return nil
		}
		if len(p) == 0 {
			return fmt.Errorf("%c message ends after its old tuple", c.op)
		}
		kind = p[0]
	}
	if c.op == 'D' {
		return fmt.Errorf("delete message without a key or old tuple (%q)", kind)
	}
	if kind != 'N' {
		return fmt.Errorf("%c message: tuple type %q, want N", c.op, kind)
	}
	if _, err = c.newTuple.read(p[1:]); err != nil {
		return fmt.Errorf("%c message, new tuple: %w", c.op, err)
	}
	c.new = &c.newTuple.data
	return nil
}

// read decodes the TupleData at the start of src and returns the rest.
func (t *tuple) read(src []byte) ([]byte, error) {
	if len(src) < 2 {
		return nil, fmt.Errorf("%d bytes, no column count", len(src))
	}
	n := int(binary.BigEndian.Uint16(src))
	src = src[2:]
	if cap(t.cols) < n {
		t.cols = make([]pglogrepl.TupleDataColumn, n)
		t.data.Columns = make([]*pglogrepl.TupleDataColumn, n)
		for i := range t.cols {
			t.data.Columns[i] = &t.cols[i]
		}
	}
	t.data.ColumnNum, t.data.Columns = uint16(n), t.data.Columns[:n]
	for i := range n {
		if len(src) == 0 {
			return nil, fmt.Errorf("column %d of %d missing", i+1, n)
		}
		col := &t.cols[i]
		col.DataType, col.Length, col.Data = src[0], 0, nil
		src = src[1:]
		switch col.DataType {
		case pglogrepl.TupleDataTypeText, pglogrepl.TupleDataTypeBinary:
			if len(src) < 4 {
				return nil, fmt.Errorf("column %d: no length", i+1)
			}
			l := binary.BigEndian.Uint32(src)
			if uint64(l) > uint64(len(src)-4) {
				return nil, fmt.Errorf("column %d: %d bytes, %d left", i+1, l, len(src)-4)
			}
			col.Length, col.Data = l, src[4:4+l:4+l]
			src = src[4+l:]
		case pglogrepl.TupleDataTypeNull, pglogrepl.TupleDataTypeToast:
		default:
			return nil, fmt.Errorf("column %d: kind %q", i+1, col.DataType)
		}
	}
	return src, nil
}
