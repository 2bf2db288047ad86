package testenv

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Postgres connects to [PostgresURL], creates a fresh schema named by
// [Name] and returns a pool whose connections have that schema as their
// search_path, so unqualified table names land in it. When the test ends
// the pool is closed and the schema is dropped with CASCADE.
//
// The test fails at once when PostgreSQL cannot be reached.
func Postgres(t testing.TB) (pool *pgxpool.Pool, schema string) {
	t.Helper()
	rawURL := PostgresURL()
	schema = Name(t)

	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	admin, err := pgx.Connect(ctx, rawURL)
	if err != nil {
		unreachable(t, "PostgreSQL", rawURL, PostgresURLEnv, err)
	}
	defer func() { _ = admin.Close(context.Background()) }()
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		t.Fatalf("testenv: cannot create schema %s at %s: %v", schema, redact(rawURL), err)
	}
	t.Cleanup(func() { dropSchema(t, rawURL, schema) })

	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		t.Fatalf("testenv: invalid PostgreSQL URL %s: %v", redact(rawURL), err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err = pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("testenv: cannot create a PostgreSQL pool for %s: %v", redact(rawURL), err)
	}
	// Registered after dropSchema, so it runs first: the test's connections
	// are gone (and their locks released) before the schema is dropped.
	t.Cleanup(pool.Close)
	if err := pool.Ping(ctx); err != nil {
		unreachable(t, "PostgreSQL", rawURL, PostgresURLEnv, err)
	}
	return pool, schema
}

// dropSchema drops a test schema over a connection of its own, so it works
// even when the test closed its pool.
func dropSchema(t testing.TB, rawURL, schema string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*connectTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, rawURL)
	if err != nil {
		t.Errorf("testenv: cannot drop schema %s: %v", schema, err)
		return
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		t.Errorf("testenv: cannot drop schema %s: %v", schema, err)
	}
}

// PostgresSchemaURL returns [PostgresURL] with search_path=schema added, for
// processes started by a test that must work in the test's schema. It
// handles both URLs and keyword/value connection strings.
func PostgresSchemaURL(t testing.TB, schema string) string {
	t.Helper()
	rawURL := PostgresURL()
	if !strings.Contains(rawURL, "://") {
		return rawURL + " search_path=" + schema
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("testenv: invalid PostgreSQL URL %s: %v", redact(rawURL), err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
