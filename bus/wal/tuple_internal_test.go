package wal

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/jackc/pglogrepl"
)

// col is a column of a test tuple: kind 't', 'b', 'n' or 'u', and the
// value of the first two.
type col struct {
	kind  byte
	value string
}

func appendTuple(b []byte, cols ...col) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
	for _, c := range cols {
		b = append(b, c.kind)
		if c.kind == 't' || c.kind == 'b' {
			b = binary.BigEndian.AppendUint32(b, uint32(len(c.value)))
			b = append(b, c.value...)
		}
	}
	return b
}

// changeMsg encodes a pgoutput row change: old is written with oldType
// when that is not 0, new when it is not nil.
func changeMsg(op byte, rel uint32, oldType byte, old, new []col) []byte {
	b := binary.BigEndian.AppendUint32([]byte{op}, rel)
	if oldType != 0 {
		b = appendTuple(append(b, oldType), old...)
	}
	if new != nil {
		b = appendTuple(append(b, 'N'), new...)
	}
	return b
}

// parseChange is what pglogrepl.Parse makes of src, with a panic (it
// does not check bounds) as an error.
func parseChange(src []byte) (c rowChange, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	m, err := pglogrepl.Parse(src)
	if err != nil {
		return c, err
	}
	switch m := m.(type) {
	case *pglogrepl.InsertMessage:
		c = rowChange{op: 'I', relID: m.RelationID, new: m.Tuple}
	case *pglogrepl.UpdateMessage:
		c = rowChange{op: 'U', relID: m.RelationID, oldType: m.OldTupleType, old: m.OldTuple, new: m.NewTuple}
	case *pglogrepl.DeleteMessage:
		c = rowChange{op: 'D', relID: m.RelationID, oldType: m.OldTupleType, old: m.OldTuple}
	default:
		return c, fmt.Errorf("%T", m)
	}
	return c, nil
}

func tupleString(t *pglogrepl.TupleData) string {
	if t == nil {
		return "none"
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%d:", t.ColumnNum)
	for _, c := range t.Columns {
		fmt.Fprintf(&b, " %c%d%q", c.DataType, c.Length, c.Data)
	}
	return b.String()
}

func changeString(c rowChange) string {
	return fmt.Sprintf("%c rel %d old %q %s new %s", c.op, c.relID, c.oldType, tupleString(c.old), tupleString(c.new))
}

var rowChanges = [][]byte{
	changeMsg('I', 16384, 0, nil, []col{{'t', "42"}, {'n', ""}, {'t', `{"a": "b"}`}, {'b', "\x00\x01"}, {'t', ""}}),
	changeMsg('U', 7, 0, nil, []col{{'t', "1"}, {'u', ""}}),
	changeMsg('U', 7, 'K', []col{{'t', "1"}}, []col{{'t', "2"}, {'t', "x"}}),
	changeMsg('U', 7, 'O', []col{{'t', "1"}, {'t', "old"}}, []col{{'t', "1"}, {'u', ""}}),
	changeMsg('D', 9, 'K', []col{{'t', "5"}}, nil),
	changeMsg('D', 9, 'O', []col{{'t', "5"}, {'n', ""}, {'t', "é"}}, nil),
	changeMsg('I', 1, 0, nil, []col{{'n', ""}}),
}

// TestRowChangeAgreesWithPglogrepl: each kind of row change decodes as
// pglogrepl.Parse decodes it, with storage reused from one message to
// the next.
func TestRowChangeAgreesWithPglogrepl(t *testing.T) {
	var c rowChange
	for i := 0; i < 2; i++ { // twice: the second pass reuses the storage
		for _, src := range rowChanges {
			want, err := parseChange(src)
			if err != nil {
				t.Fatalf("pglogrepl: %v", err)
			}
			if !isRowChange(src) {
				t.Fatalf("isRowChange(%q) = false", src)
			}
			if err := c.read(src); err != nil {
				t.Fatalf("read %q: %v", src, err)
			}
			if got, want := changeString(c), changeString(want); got != want {
				t.Errorf("read %q:\n got %s\nwant %s", src, got, want)
			}
		}
	}
}

// TestRowChangeRejectsWhatIsCut: every message cut short is an error,
// never a panic nor a value read past the end.
func TestRowChangeRejectsWhatIsCut(t *testing.T) {
	var c rowChange
	for _, src := range rowChanges {
		for n := 0; n < len(src); n++ {
			cut := src[:n]
			if err := c.read(cut); err == nil {
				t.Errorf("read of %q cut to %d bytes: no error (%s)", src, n, changeString(c))
			}
		}
	}
	for _, src := range [][]byte{
		changeMsg('I', 1, 'O', []col{{'t', "1"}}, []col{{'t', "1"}}),
		changeMsg('D', 1, 0, nil, []col{{'t', "1"}}),
		append(changeMsg('U', 1, 'K', []col{{'t', "1"}}, nil), 'X', 0, 0),
		appendTuple(binary.BigEndian.AppendUint32([]byte{'I'}, 1), col{'t', "1"}),            // no 'N'
		changeMsg('I', 1, 0, nil, []col{{'x', ""}}),                                          // unknown kind
		append(binary.BigEndian.AppendUint32([]byte{'I'}, 1), 'N', 0, 1, 't', 0xff, 0, 0, 0), // length past the end
	} {
		if err := c.read(src); err == nil {
			t.Errorf("read %q: no error (%s)", src, changeString(c))
		}
	}
}

// FuzzRowChange: whatever read accepts, pglogrepl.Parse decodes the
// same way.
func FuzzRowChange(f *testing.F) {
	for _, src := range rowChanges {
		f.Add(src)
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		if !isRowChange(src) {
			return
		}
		var c rowChange
		if err := c.read(src); err != nil {
			return
		}
		want, err := parseChange(src)
		if err != nil {
			t.Fatalf("read accepted %q, pglogrepl: %v", src, err)
		}
		if got, want := changeString(c), changeString(want); got != want {
			t.Fatalf("read %q:\n got %s\nwant %s", src, got, want)
		}
	})
}

// BenchmarkRowChange reads an insert of a bench-like row (id, a 500-byte
// JSON document, a timestamp, two short texts) with rowChange and with
// pglogrepl.Parse.
func BenchmarkRowChange(b *testing.B) {
	src := changeMsg('I', 16384, 0, nil, []col{
		{'t', "123456"}, {'t', `{"payload": "` + string(bytes.Repeat([]byte("x"), 480)) + `"}`},
		{'t', "2026-12-06 10:00:00.123456+00"}, {'t', "orders"}, {'t', "pending"},
	})
	b.Run("rowChange", func(b *testing.B) {
		b.ReportAllocs()
		var c rowChange
		for b.Loop() {
			if err := c.read(src); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("pglogrepl", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := pglogrepl.Parse(src); err != nil {
				b.Fatal(err)
			}
		}
	})
}
