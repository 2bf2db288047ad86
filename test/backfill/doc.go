// Package backfill holds the end-to-end test of millrace backfill: rows
// that existed before capture reach the observers as READ events while
// writers change them, on a bus topology with trigger capture, and a
// backfill killed with SIGKILL resumes from its cursor.
package backfill
