// Package sqlcall is the "sql" action: it calls a PostgreSQL function with
// the event as jsonb, SELECT schema.fn($1::jsonb), on a named connection
// of the [databases.NAME] section; a NAME without its section is refused
// at validate time (Config.CheckConfig).
//
// The package is not named sql so that it does not shadow database/sql.
package sqlcall
