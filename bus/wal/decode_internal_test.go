package wal

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/millrace/millrace/event"
)

// BenchmarkChange decodes an INSERT and an UPDATE with its old row
// (REPLICA IDENTITY FULL) of a table shaped like the bench's (about 500
// bytes of data) into bus messages: the capture's own cost per change.
func BenchmarkChange(b *testing.B) {
	d := newDecoder(&Config{Source: "orders_db"}, func(context.Context, string) ([]string, error) {
		return []string{"id"}, nil
	})
	cols := []*pglogrepl.RelationMessageColumn{
		{Name: "id", DataType: oidInt8}, {Name: "status", DataType: 25}, {Name: "amount", DataType: oidNumeric},
		{Name: "note", DataType: 25}, {Name: "at", DataType: oidTimestamptz},
	}
	if err := d.relation(context.Background(), &pglogrepl.RelationMessage{RelationID: 1, Namespace: "public", RelationName: "orders", Columns: cols}); err != nil {
		b.Fatal(err)
	}
	d.begin(&pglogrepl.BeginMessage{FinalLSN: 0x16B3748, CommitTime: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)})
	tuple := func(status string) *pglogrepl.TupleData {
		vals := []string{"7", status, "10.50", strings.Repeat("x", 400), "2026-01-02 03:04:05.123456+00"}
		t := &pglogrepl.TupleData{}
		for _, v := range vals {
			t.Columns = append(t.Columns, &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeText, Data: []byte(v)})
		}
		return t
	}
	before, after := tuple("new"), tuple("paid")
	b.Run("insert", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := d.change(event.Insert, 1, 0, nil, after); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("update", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := d.change(event.Update, 1, 'O', before, after); err != nil {
				b.Fatal(err)
			}
		}
	})
}
