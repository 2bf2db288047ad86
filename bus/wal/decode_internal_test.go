package wal

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
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

// TestIDsAreStable pins the event ids to their definition: a version 5
// UUID of (source, kind, LSN, index). Repeats after a restart, and
// deliveries of the same change by a build before or after this one,
// must carry the same id for dedup to drop them.
func TestIDsAreStable(t *testing.T) {
	d := newDecoder(&Config{Source: "orders_db"}, nil)
	for _, c := range []struct {
		kind  string
		lsn   pglogrepl.LSN
		index int
	}{{"change", 0x16B3748, 0}, {"change", 0x16B3748, 41}, {"backfill", 1<<63 + 5, 7}, {"change", 0, 0}} {
		want := uuid.NewSHA1(idNamespace, fmt.Appendf(nil, "%s\x00%s\x00%d\x00%d", "orders_db", c.kind, uint64(c.lsn), c.index)).String()
		if got := d.id(c.kind, c.lsn, c.index); got != want {
			t.Errorf("id(%s, %d, %d) = %s, want %s", c.kind, c.lsn, c.index, got, want)
		}
	}
	if got, want := d.id("change", 1, 2), "d2e96c3b-ac67-5168-afd8-6433d1f67f84"; got != want {
		t.Errorf("id(change, 1, 2) = %s, want %s (the ids of earlier releases)", got, want)
	}
}
