package stores_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/stores"
)

func TestPostgresDeadLetters(t *testing.T) {
	pool, _ := testenv.Postgres(t)
	var n atomic.Int32
	testDeadLetters(t, func(t *testing.T) stores.DeadLetters {
		s, err := stores.NewPostgresDeadLetters(pool, stores.PostgresDeadLettersConfig{Table: fmt.Sprintf("dead_letters_%d", n.Add(1))})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Migrate(context.Background()); err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestPostgresDeadLettersMigrateIdempotent(t *testing.T) {
	pool, schema := testenv.Postgres(t)
	ctx := context.Background()
	s, err := stores.NewPostgresDeadLetters(pool, stores.PostgresDeadLettersConfig{Table: schema + ".dlq"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = s.Migrate(ctx) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("concurrent Migrate %d: %v", i, err)
		}
	}
	id, err := s.Put(ctx, stores.DeadLetter{Reason: stores.ReasonPermanent})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate on a migrated table: %v", err)
	}
	if _, err := s.Get(ctx, id); err != nil {
		t.Errorf("entry lost by a second Migrate: %v", err)
	}
	var indexes int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND tablename = 'dlq' AND indexdef LIKE '%(observer, last_failure)%'`, schema).Scan(&indexes); err != nil {
		t.Fatal(err)
	}
	if indexes != 1 {
		t.Errorf("found %d indexes on (observer, last_failure); want 1", indexes)
	}
}

// A table made before dead letters recorded their succeeded actions
// gains the column on Migrate, keeps its entries, and stores the field.
func TestPostgresDeadLettersMigrateAddsSucceeded(t *testing.T) {
	pool, schema := testenv.Postgres(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE `+schema+`.dlq (
	id bigserial PRIMARY KEY, event_id text NOT NULL DEFAULT '', observer text NOT NULL DEFAULT '',
	action text NOT NULL DEFAULT '', reason text NOT NULL, error text NOT NULL DEFAULT '',
	attempts integer NOT NULL DEFAULT 0, first_failure timestamptz NOT NULL, last_failure timestamptz NOT NULL,
	topic text NOT NULL DEFAULT '', payload bytea NOT NULL);
INSERT INTO `+schema+`.dlq (reason, first_failure, last_failure, payload) VALUES ('permanent', now(), now(), '\x7b7d')`); err != nil {
		t.Fatal(err)
	}
	s, err := stores.NewPostgresDeadLetters(pool, stores.PostgresDeadLettersConfig{Table: schema + ".dlq"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate on an older table: %v", err)
	}
	old, err := s.Get(ctx, "1")
	if err != nil || old.Succeeded != nil {
		t.Fatalf("older entry = %+v, %v; want it, with no succeeded actions", old, err)
	}
	want := []stores.SucceededAction{{Index: 1, Key: "abc"}}
	id, err := s.Put(ctx, stores.DeadLetter{Reason: stores.ReasonExhausted, Succeeded: want})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, id)
	if err != nil || len(got.Succeeded) != 1 || got.Succeeded[0] != want[0] {
		t.Errorf("entry = %+v, %v; want succeeded %+v", got, err, want)
	}
}

func TestPostgresDeadLettersMaxEntries(t *testing.T) {
	pool, _ := testenv.Postgres(t)
	s, err := stores.NewPostgresDeadLetters(pool, stores.PostgresDeadLettersConfig{MaxEntries: 5})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	assertCapped(t, s, 5, 5)
}

func TestPostgresDeadLettersConfig(t *testing.T) {
	for _, table := range []string{"Dead", "a.b.c", "x; DROP TABLE y", "1abc"} {
		if _, err := stores.NewPostgresDeadLetters(nil, stores.PostgresDeadLettersConfig{Table: table}); err == nil {
			t.Errorf("table %q accepted; want an error", table)
		}
	}
}
