package sqlcall

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

// Config is the sql action's section.
type Config struct {
	// Database names the connection: "main" uses [databases.main].
	// Required.
	Database string `koanf:"database"`
	// Function is the function to call, "name" or "schema.name". The name
	// is quoted as written, so it is case-sensitive. Required.
	Function string `koanf:"function"`
	// Params, when set, is passed along with the event: the function then
	// receives {"event": <event>, "params": <params>} instead of the bare
	// event.
	Params map[string]any `koanf:"params"`
}

var functionRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// Validate checks the database name, the function name and that params
// can be sent as JSON.
func (c Config) Validate() error {
	var errs []error
	if c.Database == "" {
		errs = append(errs, config.Errorf("database", "is required (the NAME of a [databases.NAME] section)"))
	}
	switch {
	case c.Function == "":
		errs = append(errs, config.Errorf("function", "is required (\"name\" or \"schema.name\")"))
	case !functionRE.MatchString(c.Function):
		errs = append(errs, config.Errorf("function", "%q is not a function name: want \"name\" or \"schema.name\" (letters, digits, '_')", c.Function))
	}
	if c.Params != nil {
		if _, err := json.Marshal(c.Params); err != nil {
			errs = append(errs, config.Errorf("params", "cannot be sent as JSON: %v", err))
		}
	}
	return errors.Join(errs...)
}

var _ handlers.ConfigChecker = Config{}

// CheckConfig checks that database names a [databases.NAME] section.
func (c Config) CheckConfig(cfg *config.Config, _ config.Features) error {
	if c.Database == "" {
		return nil // Validate reports it
	}
	if err := c.checkDatabase(cfg); err != nil {
		return &config.Error{Path: "database", Msg: err.Error()}
	}
	return nil
}

func (c Config) checkDatabase(cfg *config.Config) error {
	if _, ok := cfg.Databases[c.Database]; ok {
		return nil
	}
	section := "databases." + c.Database
	known := make([]string, 0, len(cfg.Databases))
	for n := range cfg.Databases {
		known = append(known, n)
	}
	if len(known) == 0 {
		return fmt.Errorf("%s is not configured: add a [%s] section with url or url_env", section, section)
	}
	sort.Strings(known)
	return fmt.Errorf("%s is not configured: add a [%s] section with url or url_env (configured: %s)", section, section, strings.Join(known, ", "))
}

// SQL is the sql action.
type SQL struct {
	pool     *pgxpool.Pool
	query    string
	function string
	params   json.RawMessage
	logger   *slog.Logger
}

var (
	_ handlers.Action   = (*SQL)(nil)
	_ handlers.Renderer = (*SQL)(nil)
)

// New builds the action on the shared pool of [databases.<c.Database>].
// The pool connects on first use, not here.
func New(_ context.Context, c Config, deps handlers.Deps) (handlers.Action, error) {
	section := "databases." + c.Database
	if deps.Config != nil {
		if err := c.checkDatabase(deps.Config); err != nil {
			return nil, fmt.Errorf("sql: %w", err)
		}
	}
	if deps.Database == nil {
		return nil, fmt.Errorf("sql: no database connections are available for %s", section)
	}
	pool, err := deps.Database(c.Database)
	if err != nil {
		return nil, fmt.Errorf("sql: %w", err)
	}
	s := &SQL{
		pool:     pool,
		query:    "SELECT " + pgx.Identifier(strings.Split(c.Function, ".")).Sanitize() + "($1::jsonb)",
		function: c.Function,
		logger:   deps.Logger,
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if c.Params != nil {
		if s.params, err = json.Marshal(c.Params); err != nil {
			return nil, fmt.Errorf("sql: params: %w", err)
		}
	}
	return s, nil
}

// Register adds the "sql" type to r.
func Register(r *handlers.Registry) error { return handlers.Register(r, "sql", New) }

// BreakerKey names the database, postgres://host:port/dbname (no user or
// password), so that the actions calling it share one circuit breaker.
func (s *SQL) BreakerKey() string {
	c := s.pool.Config().ConnConfig
	return handlers.ServerEndpoint("postgres", c.Host, int(c.Port), "/"+c.Database)
}

// Execute calls the function with the event.
func (s *SQL) Execute(ctx context.Context, ev *event.Event) error {
	payload, err := s.payload(ev)
	if err != nil {
		return handlers.Permanent(fmt.Errorf("sql %s: encode event: %w", s.function, err))
	}
	start := time.Now()
	if _, err := s.pool.Exec(ctx, s.query, string(payload)); err != nil {
		return classify(fmt.Errorf("sql %s: %w", s.function, err))
	}
	s.logger.DebugContext(ctx, "sql function called", "function", s.function, "event_id", ev.ID,
		"took", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// Render returns the call Execute would make for ev: the query, and the
// JSON argument as Body.
func (s *SQL) Render(_ context.Context, ev *event.Event) (handlers.Effect, error) {
	payload, err := s.payload(ev)
	if err != nil {
		return handlers.Effect{}, handlers.Permanent(fmt.Errorf("sql %s: encode event: %w", s.function, err))
	}
	return handlers.Effect{Kind: "sql", Method: "SELECT", Target: s.query, Body: string(payload)}, nil
}

func (s *SQL) payload(ev *event.Event) ([]byte, error) {
	if s.params == nil {
		return event.Encode(ev)
	}
	return json.Marshal(struct {
		Event  *event.Event    `json:"event"`
		Params json.RawMessage `json:"params"`
	}{ev, s.params})
}

// permanentClasses are the SQLSTATE classes that a retry cannot fix: the
// data, the function or the schema is wrong. Every other class, and every
// error without a SQLSTATE (a lost connection, a timeout), is transient.
var permanentClasses = map[string]bool{
	"0A": true, // feature not supported
	"21": true, // cardinality violation
	"22": true, // data exception
	"23": true, // integrity constraint violation
	"2F": true, // SQL routine exception
	"38": true, // external routine exception
	"39": true, // external routine invocation exception
	"3F": true, // invalid schema name
	"42": true, // syntax error or access rule violation (e.g. unknown function)
	"44": true, // WITH CHECK OPTION violation
	"P0": true, // PL/pgSQL error (RAISE EXCEPTION)
}

// classify marks err permanent when its SQLSTATE class says a retry
// cannot help.
func classify(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && len(pgErr.Code) >= 2 && permanentClasses[pgErr.Code[:2]] {
		return handlers.Permanent(err)
	}
	return err
}
