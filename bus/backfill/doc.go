// Package backfill emits the rows that a table holds already as READ
// events, beside live capture.
//
// Run pages a table by primary key (keyset, composite keys too). Each
// page is read with SELECT … FOR SHARE and emitted, and the backfill's
// cursor advanced, in that same transaction: a writer that changes a row
// of the page waits for the page to commit, so its change comes after the
// READ in commit order, and a change that committed before the read is in
// the image already. An observer therefore never sees a backfilled image
// after a newer change of the same row, with either capture mode:
//
//   - trigger capture: the page's READ rows go into the change log, which
//     the capture reader releases in position (commit) order with the live
//     changes (TriggerEmitter);
//   - WAL capture: the page becomes one transactional logical decoding
//     message with prefix MessagePrefix, which the WAL reader decodes in
//     commit order (WALEmitter, Message).
//
// The cursor lives in the capture schema's backfills table, one row per
// (source, table, filter, observer), so a stopped backfill resumes after
// its last committed page. docs/capture.md ("Backfill") describes the
// command and the trade-offs.
package backfill
