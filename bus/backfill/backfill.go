package backfill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/time/rate"

	"github.com/millrace/millrace/bus/capture"
)

// DefaultPage is the number of rows read, locked and emitted per
// transaction when Config.Page is 0.
const DefaultPage = 500

// ErrInvalid is wrapped by the errors that bad input causes (a table that
// does not exist, has no primary key or is not watched; a filter that
// does not compile): the fix is in the command line or the database, and
// running again does not help.
var ErrInvalid = errors.New("invalid backfill")

// ErrRunning is returned when another process runs the same backfill.
var ErrRunning = errors.New("backfill already running")

// Config is one backfill.
type Config struct {
	// Source names the database (config sources[i].name).
	Source string
	// Schema is the capture schema holding the change log and the
	// backfills table.
	Schema string
	// Table is the table, "schema.table" or a name on the search_path.
	Table string
	// Entities maps a table to its entity type, as the source's entities
	// key; default: the table name without its schema.
	Entities map[string]string
	// Watched, when not nil, are the tables the source captures (its
	// tables key): the table must be one of them.
	Watched []string
	// Filter, when set, is a SQL boolean expression on the table's
	// columns (the --where of the command). It is trusted input: it runs
	// as the config's database user.
	Filter string
	// Observer, when set, is the only observer the events are for.
	Observer string
	// Page is the number of rows per transaction. Default DefaultPage.
	Page int
	// Rate bounds the rows emitted per second; 0 is unbounded.
	Rate float64
	// Restart starts over a backfill that finished or stopped, instead
	// of resuming it or reporting that it finished.
	Restart bool
	// Emitter writes the READ events (NewEmitter). Required.
	Emitter Emitter
	// CheckTrigger requires the capture trigger of Schema on the table:
	// set it in trigger mode, where READ events without live changes
	// would be of little use.
	CheckTrigger bool
	// Logger gets progress lines; nil discards them.
	Logger *slog.Logger
	// ProgressEvery is the least time between two progress lines.
	// Default 5s.
	ProgressEvery time.Duration
	// OnPage, when set, is called after each committed page.
	OnPage func(Progress)
}

// Progress is where a backfill stands.
type Progress struct {
	// Rows is the number of rows emitted by the run so far, including
	// those of earlier, stopped invocations of it.
	Rows int64
	// Emitted is the number of rows emitted by this invocation.
	Emitted int64
	// Cursor is the primary key of the last row emitted, as a JSON
	// object; nil before the first page.
	Cursor json.RawMessage
}

// Result is the outcome of Run.
type Result struct {
	Progress
	// Table is the table, "schema.table" unquoted.
	Table string
	// RunID identifies the run; event ids derive from it.
	RunID uuid.UUID
	// Resumed is true when the run had stopped before and went on from
	// its cursor.
	Resumed bool
	// AlreadyFinished is true when the backfill had finished before and
	// Restart was not set: nothing was emitted.
	AlreadyFinished bool
	// StartedAt and FinishedAt are the times of the run.
	StartedAt, FinishedAt time.Time
	// Took is the time this invocation took.
	Took time.Duration
}

// table is the backfilled table, found in the catalog.
type table struct {
	name   string // "schema.table", unquoted
	quoted string
	rel    string
	pk     []string
	entity string
}

// Run emits every row of the table (matching the filter) as a READ
// event, a page per transaction, and records its cursor as it goes. A
// backfill that stopped resumes after its last committed page; one that
// finished is reported (Result.AlreadyFinished) unless cfg.Restart. A
// cancelled ctx stops it between or during pages; the page in flight is
// rolled back, so that nothing is emitted twice.
func Run(ctx context.Context, pool *pgxpool.Pool, cfg Config) (Result, error) {
	start := time.Now()
	if cfg.Emitter == nil {
		return Result{}, errors.New("backfill: no emitter")
	}
	if cfg.Page <= 0 {
		cfg.Page = DefaultPage
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ProgressEvery <= 0 {
		cfg.ProgressEvery = 5 * time.Second
	}
	var lim *rate.Limiter
	if cfg.Rate > 0 {
		// A page is emitted at once: keep it within a second's worth of
		// rows so that the rate holds over short spans too.
		cfg.Page = max(1, min(cfg.Page, int(math.Ceil(cfg.Rate))))
		lim = rate.NewLimiter(rate.Limit(cfg.Rate), cfg.Page)
	}

	conn, err := pool.Acquire(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("backfill: connect: %w", err)
	}
	defer conn.Release()
	c := conn.Conn()

	t, err := resolve(ctx, c, cfg)
	if err != nil {
		return Result{}, err
	}
	res := Result{Table: t.name}
	log := cfg.Logger.With("source", cfg.Source, "table", t.name)

	// One run of a backfill at a time: a session lock on the connection
	// that emits, freed when it closes, whatever way the process ends.
	key := lockKey("millrace backfill", cfg.Schema, cfg.Source, t.name, cfg.Filter, cfg.Observer)
	var locked bool
	if err := c.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&locked); err != nil {
		return res, fmt.Errorf("backfill: lock: %w", err)
	}
	if !locked {
		return res, fmt.Errorf("backfill %s of source %s: %w in another process", t.name, cfg.Source, ErrRunning)
	}
	defer func() {
		_, _ = c.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", key)
	}()

	st, err := begin(ctx, c, cfg, t)
	if err != nil {
		return res, err
	}
	res.RunID, res.StartedAt, res.Resumed, res.Rows, res.Cursor = st.runID, st.startedAt, st.resumed, st.rows, st.cursor
	if st.finished != nil {
		res.AlreadyFinished, res.FinishedAt = true, *st.finished
		res.Took = time.Since(start)
		return res, nil
	}
	if st.resumed {
		log.Info("backfill: resuming", "rows", st.rows, "cursor", string(st.cursor))
	} else {
		log.Info("backfill: starting", "page", cfg.Page, "rate", cfg.Rate, "filter", cfg.Filter, "observer", cfg.Observer)
	}

	first, next := pageQueries(t, cfg.Filter)
	lastLog := time.Now()
	for {
		if err := ctx.Err(); err != nil {
			res.Took = time.Since(start)
			return res, err
		}
		n, cursor, finishedAt, err := page(ctx, c, cfg, t, first, next, res)
		if err != nil {
			res.Took = time.Since(start)
			return res, err
		}
		res.Rows += int64(n)
		res.Emitted += int64(n)
		if n > 0 {
			res.Cursor = cursor
		}
		if cfg.OnPage != nil {
			cfg.OnPage(res.Progress)
		}
		if finishedAt != nil {
			res.FinishedAt = *finishedAt
			res.Took = time.Since(start)
			log.Info("backfill: finished", "rows", res.Rows, "emitted", res.Emitted, "took", res.Took.Round(time.Millisecond),
				"rate", perSecond(res.Emitted, res.Took))
			return res, nil
		}
		if time.Since(lastLog) >= cfg.ProgressEvery {
			lastLog = time.Now()
			log.Info("backfill: progress", "rows", res.Rows, "rate", perSecond(res.Emitted, time.Since(start)),
				"cursor", string(res.Cursor))
		}
		if lim != nil {
			if err := lim.WaitN(ctx, n); err != nil {
				res.Took = time.Since(start)
				if ctx.Err() != nil {
					return res, ctx.Err()
				}
				return res, fmt.Errorf("backfill: rate: %w", err)
			}
		}
	}
}

// lockKey turns a name into a key for PostgreSQL's advisory locks.
func lockKey(parts ...string) int64 {
	h := fnv.New64a()
	for _, p := range parts {
		_, _ = h.Write([]byte(p))
		_, _ = h.Write([]byte{0})
	}
	return int64(h.Sum64())
}

func perSecond(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return math.Round(float64(n)/d.Seconds()*10) / 10
}

// resolve finds the table in the catalog and checks that it can be
// backfilled.
func resolve(ctx context.Context, c *pgx.Conn, cfg Config) (table, error) {
	var t table
	var oid uint32
	var nsp string
	err := c.QueryRow(ctx, `
		SELECT c.oid, n.nspname, c.relname
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')`, cfg.Table).Scan(&oid, &nsp, &t.rel)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, fmt.Errorf("%w: table %s does not exist", ErrInvalid, cfg.Table)
	}
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42602" { // invalid_name
			return t, fmt.Errorf("%w: table %q is not a valid name", ErrInvalid, cfg.Table)
		}
		return t, fmt.Errorf("backfill: table %s: %w", cfg.Table, err)
	}
	t.name = nsp + "." + t.rel
	t.quoted = pgx.Identifier{nsp, t.rel}.Sanitize()
	if t.pk, err = capture.PrimaryKey(ctx, c, oid); err != nil {
		return t, fmt.Errorf("backfill: table %s: primary key: %w", t.name, err)
	}
	if len(t.pk) == 0 {
		return t, fmt.Errorf("%w: table %s has no primary key: backfill pages by primary key (add one, as capture needs too)", ErrInvalid, t.name)
	}
	if cfg.Watched != nil {
		var watched bool
		if err := c.QueryRow(ctx, "SELECT $1::oid = ANY (SELECT to_regclass(w)::oid FROM unnest($2::text[]) w)",
			oid, cfg.Watched).Scan(&watched); err != nil {
			return t, fmt.Errorf("backfill: table %s: %w", t.name, err)
		}
		if !watched {
			return t, fmt.Errorf("%w: table %s is not one of the source's tables (%s)", ErrInvalid, t.name, strings.Join(cfg.Watched, ", "))
		}
	}
	if cfg.CheckTrigger {
		var watched bool
		if err := c.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = $1 AND tgname = $2)",
			oid, cfg.Schema+"_capture").Scan(&watched); err != nil {
			return t, fmt.Errorf("backfill: table %s: triggers: %w", t.name, err)
		}
		if !watched {
			return t, fmt.Errorf("%w: table %s has no capture trigger of schema %s: run millrace watch first, so that changes made during the backfill are captured too",
				ErrInvalid, t.name, cfg.Schema)
		}
	}
	t.entity = cfg.Entities[cfg.Table]
	if t.entity == "" {
		t.entity = cfg.Entities[t.name]
	}
	if t.entity == "" {
		t.entity = t.rel
	}
	return t, nil
}

// state is the backfills row of a run.
type state struct {
	runID     uuid.UUID
	cursor    json.RawMessage
	rows      int64
	startedAt time.Time
	finished  *time.Time
	resumed   bool
}

// begin finds or creates the backfills row of cfg: a new run, the one to
// resume, or one that finished (st.finished set, unless cfg.Restart, which
// starts it over).
func begin(ctx context.Context, c *pgx.Conn, cfg Config, t table) (state, error) {
	var st state
	q := pgx.Identifier{cfg.Schema}.Sanitize() + ".backfills"
	key := []any{cfg.Source, t.name, cfg.Filter, cfg.Observer}
	err := c.QueryRow(ctx, `SELECT run_id, cursor, rows, started_at, finished_at FROM `+q+`
		WHERE source = $1 AND source_table = $2 AND filter = $3 AND observer = $4`, key...).
		Scan(&st.runID, &st.cursor, &st.rows, &st.startedAt, &st.finished)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		err = c.QueryRow(ctx, `INSERT INTO `+q+` (source, source_table, filter, observer) VALUES ($1, $2, $3, $4)
			RETURNING run_id, started_at`, key...).Scan(&st.runID, &st.startedAt)
		if err != nil {
			return st, fmt.Errorf("backfill: record the run: %w", err)
		}
		return st, nil
	case err != nil:
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42P01" { // undefined_table
			return st, fmt.Errorf("%w: schema %s has no backfills table: run millrace migrate first", ErrInvalid, cfg.Schema)
		}
		return st, fmt.Errorf("backfill: read the run: %w", err)
	}
	if cfg.Restart {
		err = c.QueryRow(ctx, `UPDATE `+q+` SET run_id = gen_random_uuid(), cursor = NULL, rows = 0, started_at = now(),
			updated_at = now(), finished_at = NULL
			WHERE source = $1 AND source_table = $2 AND filter = $3 AND observer = $4
			RETURNING run_id, started_at`, key...).Scan(&st.runID, &st.startedAt)
		if err != nil {
			return st, fmt.Errorf("backfill: restart the run: %w", err)
		}
		return state{runID: st.runID, startedAt: st.startedAt}, nil
	}
	st.resumed = st.finished == nil
	return st, nil
}

// pageQueries read a page: the first, and the next after the cursor
// ($1, a JSON object of the key columns), in key order, locked FOR SHARE
// so that writers of those rows wait for the page's commit. FOR KEY SHARE
// would not do: it lets non-key updates through. The cursor's values are
// converted to the columns' types by jsonb_populate_record, a stable
// function, so the comparison stays an index condition on the primary
// key. Two queries rather than one with "$1 IS NULL OR": a generic plan
// could not use the index for that.
func pageQueries(t table, filter string) (first, next string) {
	cols := make([]string, len(t.pk))
	vals := make([]string, len(t.pk))
	for i, k := range t.pk {
		id := pgx.Identifier{k}.Sanitize()
		cols[i] = "t." + id
		vals[i] = "(jsonb_populate_record(NULL::" + t.quoted + ", $1::jsonb))." + id
	}
	after := "ROW(" + strings.Join(cols, ", ") + ") > ROW(" + strings.Join(vals, ", ") + ")"
	build := func(limit string, conds ...string) string {
		if filter != "" {
			conds = append(conds, "("+filter+"\n)")
		}
		where := ""
		if len(conds) > 0 {
			where = " WHERE " + strings.Join(conds, " AND ")
		}
		return "SELECT row_to_json(t)::text FROM " + t.quoted + " t" + where +
			" ORDER BY " + strings.Join(cols, ", ") + " LIMIT " + limit + " FOR SHARE OF t"
	}
	return build("$1"), build("$2", after)
}

// maxAttempts bounds the tries of one page that a deadlock with a writer
// aborted.
const maxAttempts = 10

// page reads, emits and records one page in one transaction, and retries
// it when PostgreSQL aborted it to break a deadlock with a writer (a
// writer that locks the page's rows in another order than the key's).
// An empty page marks the backfill finished.
func page(ctx context.Context, c *pgx.Conn, cfg Config, t table, first, next string, res Result) (n int, cursor json.RawMessage, finished *time.Time, err error) {
	for attempt := 1; ; attempt++ {
		n, cursor, finished, err = pageOnce(ctx, c, cfg, t, first, next, res)
		var pe *pgconn.PgError
		if err == nil || attempt == maxAttempts || !errors.As(err, &pe) || (pe.Code != "40P01" && pe.Code != "40001") {
			return n, cursor, finished, err
		}
		cfg.Logger.Warn("backfill: page aborted by a conflict with a writer; trying again", "source", cfg.Source,
			"table", t.name, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return 0, nil, nil, ctx.Err()
		case <-time.After(time.Duration(attempt) * 50 * time.Millisecond):
		}
	}
}

func pageOnce(ctx context.Context, c *pgx.Conn, cfg Config, t table, first, next string, res Result) (n int, cursor json.RawMessage, finished *time.Time, err error) {
	tx, err := c.Begin(ctx)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("backfill: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	var rows pgx.Rows
	if res.Cursor == nil {
		rows, err = tx.Query(ctx, first, cfg.Page)
	} else {
		rows, err = tx.Query(ctx, next, string(res.Cursor), cfg.Page)
	}
	if err != nil {
		return 0, nil, nil, readError(cfg, t, err)
	}
	imgs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, nil, nil, readError(cfg, t, err)
	}
	p := &Page{Table: t.name, Entity: t.entity, Observer: cfg.Observer, RunID: res.RunID, Rows: make([]Row, len(imgs))}
	for i, img := range imgs {
		p.Rows[i].Image = json.RawMessage(img)
		var key json.RawMessage
		if p.Rows[i].EntityID, key, err = rowKey(t.pk, p.Rows[i].Image); err != nil {
			return 0, nil, nil, fmt.Errorf("backfill: table %s: %w", t.name, err)
		}
		cursor = key
	}
	if len(imgs) > 0 {
		if err := cfg.Emitter.Emit(ctx, tx, p); err != nil {
			return 0, nil, nil, fmt.Errorf("backfill: table %s: %w", t.name, err)
		}
	}
	sq := pgx.Identifier{cfg.Schema}.Sanitize() + ".backfills"
	var curArg any
	if cursor != nil {
		curArg = string(cursor)
	}
	err = tx.QueryRow(ctx, `UPDATE `+sq+` SET cursor = coalesce($5::jsonb, cursor), rows = rows + $6, updated_at = now(),
		finished_at = CASE WHEN $7 THEN now() END
		WHERE source = $1 AND source_table = $2 AND filter = $3 AND observer = $4 AND run_id = $8
		RETURNING finished_at`, cfg.Source, t.name, cfg.Filter, cfg.Observer, curArg, len(imgs), len(imgs) == 0, res.RunID).
		Scan(&finished)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil, nil, fmt.Errorf("backfill: table %s: the run was restarted by another process", t.name)
	}
	if err != nil {
		return 0, nil, nil, fmt.Errorf("backfill: record the cursor: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, nil, nil, fmt.Errorf("backfill: commit: %w", err)
	}
	return len(imgs), cursor, finished, nil
}

// readError explains an error of the page query: one in the filter
// (syntax, unknown column, wrong type) is bad input.
func readError(cfg Config, t table, err error) error {
	var pe *pgconn.PgError
	if cfg.Filter != "" && errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "42") || strings.HasPrefix(pe.Code, "22")) {
		return fmt.Errorf("%w: --where %q on table %s: %s", ErrInvalid, cfg.Filter, t.name, pe.Message)
	}
	return fmt.Errorf("backfill: table %s: read a page: %w", t.name, err)
}

// rowKey returns the entity id of a row image (its key columns as text,
// joined with ':', as the capture trigger writes it) and its key as a
// JSON object, the cursor.
func rowKey(pk []string, img json.RawMessage) (string, json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(img, &m); err != nil {
		return "", nil, fmt.Errorf("row image: %w", err)
	}
	parts := make([]string, len(pk))
	key := make(map[string]json.RawMessage, len(pk))
	for i, k := range pk {
		v, ok := m[k]
		if !ok {
			return "", nil, fmt.Errorf("row image has no key column %q", k)
		}
		key[k] = v
		var s string
		if len(v) > 0 && v[0] == '"' {
			if err := json.Unmarshal(v, &s); err != nil {
				return "", nil, fmt.Errorf("key column %q: %w", k, err)
			}
		} else {
			s = string(v)
		}
		parts[i] = s
	}
	b, err := json.Marshal(key)
	if err != nil {
		return "", nil, err
	}
	return strings.Join(parts, ":"), b, nil
}
