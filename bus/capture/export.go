package capture

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Export reads the change log with plain SELECTs, in position order:
// the changes above position from, created at or after since (zero: any),
// at most limit of them (0: all). For each it calls fn with the position
// and the envelope a capture would publish for it. It takes no lease and
// moves no checkpoint, so capture and consumers are not disturbed.
//
// Unlike capture, it does not wait at holes: a change whose transaction
// commits after Export read past its position is not exported.
//
// With until after now it then taps the changes appended meanwhile,
// polling every PollInterval, until that time.
func (c Config) Export(ctx context.Context, pool *pgxpool.Pool, from int64, since, until time.Time, limit int,
	fn func(pos int64, envelope []byte) error) error {
	c.setDefaults()
	r := newReader(c, from, nil)
	const batch = 500
	n := 0
	for {
		rows, err := pool.Query(ctx, r.query, r.cursor, batch)
		if err != nil {
			return fmt.Errorf("capture: export: %w", err)
		}
		var all []row
		for rows.Next() {
			rw, _, err := scanRow(rows)
			if err != nil {
				rows.Close()
				return fmt.Errorf("capture: export: %w", err)
			}
			all = append(all, rw)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("capture: export: %w", err)
		}
		for i := range all {
			rw := &all[i]
			r.cursor = rw.pos
			if !since.IsZero() && rw.createdAt.Before(since) {
				continue
			}
			msg, err := c.toMessage(rw)
			if err != nil {
				return fmt.Errorf("capture: export: %w", err)
			}
			if err := fn(rw.pos, msg.Payload); err != nil {
				return err
			}
			if n++; limit > 0 && n >= limit {
				return nil
			}
		}
		if len(all) < batch {
			// The end of the log: done, or wait for more while tapping.
			wait := min(time.Until(until), c.PollInterval)
			if wait <= 0 {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		}
	}
}
