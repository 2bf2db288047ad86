package capture

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Reading the change log safely.
//
// Positions are taken from a sequence when a row is inserted but become
// visible when its transaction commits, so a reader that keeps only
// "position > last seen" loses the rows of a transaction that took its
// position before, and committed after, a row that was already read.
//
// The reader walks positions in order and stops at the first hole: a
// position below a visible row that is not visible itself. Such a hole is
// either held by a transaction still running (its row will appear) or
// empty for good (a rolled-back transaction, a conflicting insert, a
// sequence jump after a crash). next_position() gives the writing
// transaction its xid before it takes a position, so the holder of a hole
// below the highest visible position P had an xid before the reader saw
// P. The reader then takes a fresh xid N (greater than every xid assigned
// before it) and remembers the barrier (P, N): once a read's own snapshot
// has pg_snapshot_xmin >= N, no transaction older than N is running, the
// holes below P are final, and that read skips them. Rows are never skipped,
// only positions that no committed row holds.
//
// Reading in position order rather than in (xid, position) order, as
// watermill-sql does, keeps the changes of one row in commit order: a
// transaction can only change a row after the previous writer of that row
// committed, so its change-log position is higher, while its xid may be
// lower (it may have written something else first).
//
// In FraiseQL mode the writers are not ours and may take a position before
// their transaction has an xid; the barrier's xid is then taken only after
// a grace period, long enough for any such writer to have got its xid (see
// fraiseqlGrace and docs/capture.md for the limit this leaves).

// fraiseqlGrace is how long a hole in a FraiseQL change log is observed
// before the barrier's xid is taken.
const fraiseqlGrace = 500 * time.Millisecond

// row is one change as read from the log.
type row struct {
	pos       int64
	id        string
	op        string
	entity    string
	entityID  string
	after     []byte
	before    []byte
	changes   []byte
	userID    *string
	tenantID  *string
	createdAt time.Time
	source    *string
	seq       *int64
	metadata  []byte
	xid       *string // of the writing transaction; none in a FraiseQL change log
}

// barrier makes holes below `below` final once a snapshot's xmin reaches n0.
type barrier struct {
	set   bool
	below int64
	n0    uint64
	taken time.Time

	// Grace mode: the hole was first seen at seen, with pendingBelow the
	// highest visible position then.
	seen         time.Time
	pendingBelow int64
}

// reader reads the change log from cursor on, in position order, stopping
// at holes that may still be filled.
type reader struct {
	query  string
	grace  time.Duration
	logger *slog.Logger

	cursor  int64
	barrier barrier
	// blockedAt is the position of the hole the reader waits at, and
	// since when; a long wait is logged once.
	blockedAt    int64
	blockedSince time.Time
	warned       bool
}

func newReader(cfg Config, cursor int64, logger *slog.Logger) *reader {
	r := &reader{cursor: cursor, logger: logger}
	if cfg.Mode == ModeFraiseQL {
		r.query = fraiseqlQuery(cfg.fraiseqlTable())
		r.grace = fraiseqlGrace
	} else {
		r.query = millraceQuery(cfg.Schema)
	}
	return r
}

func millraceQuery(schema string) string {
	return `SELECT h.horizon, c.position, c.id::text, c.op, c.entity_type, c.entity_id, c.after_image, c.before_image,
	c.changes, c.user_id, c.tenant_id, c.created_at, c.source, c.seq, c.metadata, c.xid::text
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS horizon) h
CROSS JOIN LATERAL (
	SELECT * FROM ` + ident(schema) + `.change_log WHERE position > $1 ORDER BY position LIMIT $2
) c`
}

// fraiseqlQuery maps core.tb_entity_change_log onto the change-log row.
func fraiseqlQuery(table string) string {
	return `SELECT h.horizon, c.position, c.id, c.op, c.entity_type, c.entity_id, c.after_image, c.before_image,
	c.changes, c.user_id, c.tenant_id, c.created_at, c.source, c.seq, c.metadata, c.xid
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS horizon) h
CROSS JOIN LATERAL (
	SELECT pk_entity_change_log AS position, coalesce(id::text, '') AS id, upper(modification_type) AS op,
		object_type AS entity_type, coalesce(object_id::text, '') AS entity_id,
		object_data AS after_image, object_data_before AS before_image, NULL::jsonb AS changes,
		fk_contact::text AS user_id, tenant_id::text AS tenant_id, coalesce(created_at, now()) AS created_at,
		NULL::text AS source, seq, NULL::jsonb AS metadata, NULL::text AS xid
	FROM ` + table + ` WHERE pk_entity_change_log > $1 ORDER BY pk_entity_change_log LIMIT $2
) c`
}

// read returns up to n rows after the cursor that are safe to release, in
// position order, and advances the cursor past them. more reports that
// more rows are probably waiting (a full batch, not stopped at a hole).
func (r *reader) read(ctx context.Context, conn *pgx.Conn, n int) (out []row, more bool, err error) {
	rows, err := conn.Query(ctx, r.query, r.cursor, n)
	if err != nil {
		return nil, false, fmt.Errorf("read change log: %w", err)
	}
	var horizon uint64
	var all []row
	for rows.Next() {
		rw, h, err := scanRow(rows)
		if err != nil {
			rows.Close()
			return nil, false, fmt.Errorf("read change log: %w", err)
		}
		if horizon, err = strconv.ParseUint(h, 10, 64); err != nil {
			rows.Close()
			return nil, false, fmt.Errorf("read change log: snapshot xmin %q: %w", h, err)
		}
		all = append(all, rw)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("read change log: %w", err)
	}

	b := &r.barrier
	resolved := b.set && horizon >= b.n0
	expected := r.cursor + 1
	hole := false
	out = all // the rows released are all's first ones
	for i, rw := range all {
		if rw.pos != expected {
			if !(resolved && rw.pos <= b.below) {
				hole, out = true, all[:i]
				break
			}
			r.logger.Debug("capture: skipping positions no transaction holds", "from", expected, "to", rw.pos-1)
		}
		expected = rw.pos + 1
	}
	if len(out) > 0 {
		r.cursor = out[len(out)-1].pos
	}
	if b.set && r.cursor >= b.below {
		*b = barrier{}
	}
	if !hole {
		r.blockedSince = time.Time{}
		if !b.set {
			*b = barrier{} // a hole watched in grace mode was filled
		}
		return out, len(all) == n, nil
	}

	// Stopped at a hole at r.cursor+1, below the highest visible position.
	top := all[len(all)-1].pos
	first := r.noteBlocked(r.cursor + 1)
	if b.set && !resolved && (top <= b.below || time.Since(b.taken) < time.Second) {
		return out, false, nil // a barrier covers the hole, or was just taken: wait for it
	}
	if r.grace > 0 {
		if b.seen.IsZero() || b.set {
			*b = barrier{seen: time.Now(), pendingBelow: top}
			return out, false, nil
		}
		if time.Since(b.seen) < r.grace {
			return out, false, nil
		}
		top = b.pendingBelow
	} else if first {
		// A hole at the tail is most often a transaction about to
		// commit: look again before spending an xid on a barrier.
		return out, false, nil
	}
	var x string
	if err := conn.QueryRow(ctx, "SELECT pg_current_xact_id()::text").Scan(&x); err != nil {
		return out, false, fmt.Errorf("read change log: take a barrier xid: %w", err)
	}
	n0, err := strconv.ParseUint(x, 10, 64)
	if err != nil {
		return out, false, fmt.Errorf("read change log: barrier xid %q: %w", x, err)
	}
	*b = barrier{set: true, below: top, n0: n0, taken: time.Now()}
	return out, false, nil
}

// noteBlocked records that the reader stopped at the hole at pos, and
// reports whether it is a new one. A hole that holds the reader back for
// long (a transaction that took a position and stays open) is logged once.
func (r *reader) noteBlocked(pos int64) (first bool) {
	if r.blockedAt != pos || r.blockedSince.IsZero() {
		r.blockedAt, r.blockedSince, r.warned = pos, time.Now(), false
		return true
	}
	if !r.warned && time.Since(r.blockedSince) > 30*time.Second {
		r.warned = true
		r.logger.Warn("capture: waiting for an open transaction that wrote to the change log", "position", pos,
			"waiting", time.Since(r.blockedSince).Round(time.Second))
	}
	return false
}

// scanRow reads one row of the change-log query (reader's and export's)
// and the snapshot horizon that comes first in it.
func scanRow(rows pgx.Rows) (rw row, horizon string, err error) {
	var id *string
	err = rows.Scan(&horizon, &rw.pos, &id, &rw.op, &rw.entity, &rw.entityID, &rw.after, &rw.before,
		&rw.changes, &rw.userID, &rw.tenantID, &rw.createdAt, &rw.source, &rw.seq, &rw.metadata, &rw.xid)
	if id != nil {
		rw.id = *id
	}
	return rw, horizon, err
}
