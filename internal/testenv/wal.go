package testenv

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// ReplicationNames returns a replication slot and publication name unique
// to the test, and drops both when the test ends, even when it failed: a
// slot left behind retains WAL for ever. Call it before starting what
// streams the slot, so that the cleanup runs after that stopped; a
// walsender still streaming after 10 s is terminated.
func ReplicationNames(t testing.TB) (slot, publication string) {
	t.Helper()
	name := strings.ToLower(Name(t))
	if len(name) > 55 {
		name = name[len(name)-55:]
	}
	slot, publication = "s_"+name, "p_"+name
	t.Cleanup(func() { DropReplication(t, slot, publication) })
	return slot, publication
}

// DropReplication drops a slot and a publication if they exist.
func DropReplication(t testing.TB, slot, publication string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*connectTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, PostgresURL())
	if err != nil {
		t.Errorf("testenv: cannot drop replication slot %s: %v", slot, err)
		return
	}
	defer func() { _ = conn.Close(context.Background()) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var pid *int32
		err := conn.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) {
			break
		}
		if err != nil {
			t.Errorf("testenv: replication slot %s: %v", slot, err)
			return
		}
		if pid != nil {
			if time.Now().After(deadline) {
				_, _ = conn.Exec(ctx, "SELECT pg_terminate_backend($1)", *pid)
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot); err != nil {
			if time.Now().Before(deadline.Add(5 * time.Second)) {
				time.Sleep(100 * time.Millisecond)
				continue // taken again meanwhile
			}
			t.Errorf("testenv: cannot drop replication slot %s: %v", slot, err)
			return
		}
		break
	}
	if publication == "" {
		return
	}
	if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{publication}.Sanitize()); err != nil {
		t.Errorf("testenv: cannot drop publication %s: %v", publication, err)
	}
}
