package capture

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/millrace/millrace/bus"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/bus/lanes"
	"github.com/millrace/millrace/internal/runs"
)

// Modes of a source.
const (
	// ModeMillrace reads millrace's own change log, filled by the triggers
	// that Watch installs and by Publisher.
	ModeMillrace = "millrace"
	// ModeFraiseQL reads an existing FraiseQL core.tb_entity_change_log.
	ModeFraiseQL = "fraiseql"
)

// FraiseQLTable is the change log read in FraiseQL mode by default.
const FraiseQLTable = "core.tb_entity_change_log"

// flushEvery bounds how often the checkpoint is written while messages
// are being acked.
const flushEvery = 100 * time.Millisecond

// queryTimeout bounds each query of the reader. Its queries do not end
// with the subscription's context: cancelling a query breaks the
// connection, which holds the lease and writes the last checkpoint.
const queryTimeout = 30 * time.Second

// defaultRetryDelay is the wait before a nacked message is released again
// when the handler did not set bus.RetryDelayMetadata.
const defaultRetryDelay = 250 * time.Millisecond

// Config is a capture reader's config, built from config.Source by the
// topologies. Zero fields take their defaults.
type Config struct {
	// Source names the database: the events' "source" field and their
	// subject segment. Required.
	Source string
	// Schema holds the change log and checkpoints. Default "millrace".
	Schema string
	// Tables are the watched tables, "schema.table" (for Watch). In
	// FraiseQL mode, Tables may name the change-log table instead of
	// core.tb_entity_change_log.
	Tables []string
	// Entities maps a table to its entity type (for Watch). Default: the
	// table name without its schema.
	Entities map[string]string
	// PollInterval is the polling base. Default 100ms.
	PollInterval time.Duration
	// BatchSize is the number of changes read at once. Default 500.
	BatchSize int
	// Notify listens on Channel(Schema) to read as soon as a statement
	// changed a watched table (see SetNotify); polling goes on anyway.
	Notify bool
	// Mode is ModeMillrace (default) or ModeFraiseQL.
	Mode string
	// MaxInFlight bounds the messages released at once. Default 64.
	MaxInFlight int
	// MaxBuffered bounds the changes held, in flight or queued. Default
	// 2 × BatchSize, at least MaxInFlight.
	MaxBuffered int
	// LeaseRetry is how often a standby tries to take the lease. Default 1s.
	LeaseRetry time.Duration
	// DrainTimeout bounds how long stopping waits for released messages
	// to be acked before their contexts are cancelled. Default 10s.
	DrainTimeout time.Duration
}

func (c *Config) setDefaults() {
	if c.Schema == "" {
		c.Schema = DefaultSchema
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 100 * time.Millisecond
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.Mode == "" {
		c.Mode = ModeMillrace
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 64
	}
	if c.LeaseRetry <= 0 {
		c.LeaseRetry = time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 10 * time.Second
	}
}

// Validate reports every problem of c (after defaults).
func (c Config) Validate() error {
	var errs []error
	if c.Source == "" {
		errs = append(errs, errors.New("capture: source is required"))
	}
	if err := checkSchema(c.Schema); err != nil {
		errs = append(errs, err)
	}
	switch c.Mode {
	case ModeMillrace:
	case ModeFraiseQL:
		if len(c.Tables) > 1 {
			errs = append(errs, errors.New("capture: fraiseql mode reads one change-log table"))
		}
	default:
		errs = append(errs, fmt.Errorf("capture: mode %q is not millrace or fraiseql", c.Mode))
	}
	if c.BatchSize > 10000 {
		errs = append(errs, fmt.Errorf("capture: batch size %d is above 10000", c.BatchSize))
	}
	return errors.Join(errs...)
}

// fraiseqlTable is the quoted change-log table of FraiseQL mode.
func (c *Config) fraiseqlTable() string {
	t := FraiseQLTable
	if len(c.Tables) == 1 {
		t = c.Tables[0]
	}
	if i := strings.IndexByte(t, '.'); i > 0 {
		return ident(t[:i]) + "." + ident(t[i+1:])
	}
	return ident(t)
}

// Subscriber reads the change log of one database as a Watermill
// subscriber. Subscribe's topic is the consumer group: each group has its
// own durable checkpoint, and one reader at a time across processes (a
// PostgreSQL advisory lock); the others stand by.
//
// Messages carry the change id as UUID and the event JSON as payload, with
// bus.KeyMetadata and bus.SubjectMetadata set. Messages of one
// entity are released one after another, in commit order; different
// entities run in parallel up to MaxInFlight. A nacked message is released
// again after the delay set in bus.RetryDelayMetadata (default
// 250ms), before any later message of its entity. The checkpoint moves
// only over messages that were acked, with every earlier one acked too, so
// a crash replays at most the unacknowledged tail: at least once, never
// lost.
type Subscriber struct {
	pool   *pgxpool.Pool
	cfg    Config
	logger *slog.Logger
	runs   runs.Set
}

var _ message.Subscriber = (*Subscriber)(nil)

// NewSubscriber returns a reader over pool's database. It does not own
// the pool. Each subscription opens one or two connections of its own
// (the lease, and the listener when Notify is set), outside the pool.
func NewSubscriber(pool *pgxpool.Pool, cfg Config, logger *slog.Logger) *Subscriber {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg.setDefaults()
	return &Subscriber{pool: pool, cfg: cfg, logger: logger}
}

// Subscribe starts reading for the consumer group. The channel is closed
// once ctx ends or Close is called and the released messages settled (or
// DrainTimeout passed).
func (s *Subscriber) Subscribe(ctx context.Context, group string) (<-chan *message.Message, error) {
	if err := s.cfg.Validate(); err != nil {
		return nil, err
	}
	if group == "" {
		return nil, errors.New("capture: subscribe: the consumer group is required")
	}
	sub := &subscription{
		s:      s,
		cfg:    s.cfg,
		group:  group,
		logger: s.logger.With("source", s.cfg.Source, "group", group),
		out:    make(chan *message.Message),
	}
	if err := s.runs.Start(ctx, sub.run); err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	return sub.out, nil
}

// Close stops every subscription and waits for them.
func (s *Subscriber) Close() error {
	s.runs.Close()
	return nil
}

// subscription is one consumer group's reader: it waits for the lease,
// then reads until it loses it or is stopped.
type subscription struct {
	s      *Subscriber
	cfg    Config
	group  string
	logger *slog.Logger
	out    chan *message.Message
}

func (sub *subscription) connect(ctx context.Context) (*pgx.Conn, error) {
	cc := sub.s.pool.Config().ConnConfig
	params := make(map[string]string, len(cc.RuntimeParams)+1)
	for k, v := range cc.RuntimeParams {
		params[k] = v
	}
	params["application_name"] = "millrace capture " + sub.cfg.Source + "/" + sub.group
	cc.RuntimeParams = params
	return pgx.ConnectConfig(ctx, cc)
}

func closeConn(conn *pgx.Conn) {
	if conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// run is the lease loop. The lease is a session advisory lock held by the
// reading connection: when the process dies its connection closes and
// PostgreSQL frees the lock, and a standby's next try takes it.
func (sub *subscription) run(ctx context.Context) {
	defer close(sub.out)
	key := lockKey("millrace capture", sub.cfg.Schema, sub.cfg.Source, sub.group)
	var conn *pgx.Conn
	defer func() { closeConn(conn) }()
	standby, failing := false, false
	for ctx.Err() == nil {
		if conn == nil || conn.IsClosed() {
			c, err := sub.connect(ctx)
			if err != nil {
				if ctx.Err() == nil && !failing {
					sub.logger.Warn("capture: cannot connect; retrying", "err", err)
				}
				failing = true
				runs.Sleep(ctx, sub.cfg.LeaseRetry)
				continue
			}
			conn, failing = c, false
		}
		var got bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&got); err != nil {
			if ctx.Err() == nil {
				sub.logger.Warn("capture: cannot try the lease; reconnecting", "err", err)
			}
			closeConn(conn)
			conn = nil
			runs.Sleep(ctx, sub.cfg.LeaseRetry)
			continue
		}
		if !got {
			if !standby {
				sub.logger.Info("capture: standby: another process holds the lease")
				standby = true
			}
			runs.Sleep(ctx, sub.cfg.LeaseRetry)
			continue
		}
		standby = false
		sub.logger.Info("capture: active: holding the lease")
		err := sub.runTerm(ctx, conn)
		// Closing the connection releases the lease at once.
		closeConn(conn)
		conn = nil
		if ctx.Err() != nil {
			sub.logger.Info("capture: stopped; lease released")
			return
		}
		sub.logger.Warn("capture: reading failed; lease released, retrying", "err", err)
		runs.Sleep(ctx, sub.cfg.LeaseRetry)
	}
}

// term is one lease holding: reading, releasing through lanes, and
// checkpointing until the lease is lost or the subscription stops.
type term struct {
	sub  *subscription
	cfg  Config
	conn *pgx.Conn

	lanes *lanes.Lanes
	wake  chan struct{}

	mu          sync.Mutex
	pending     []*entry // read order; the head is the oldest unacked
	acked       int64    // every position up to here was acked
	outstanding int      // pushed, not settled

	flushed int64 // durable checkpoint

	rows map[*message.Message]*row // pushed, event not built yet
}

type entry struct {
	pos   int64
	acked bool
}

func (sub *subscription) loadCheckpoint(ctx context.Context, conn *pgx.Conn) (int64, error) {
	var pos int64
	err := conn.QueryRow(ctx, "SELECT position FROM "+ident(sub.cfg.Schema)+".checkpoints WHERE source = $1 AND consumer_group = $2",
		sub.cfg.Source, sub.group).Scan(&pos)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, nil
	case err != nil:
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42P01" { // undefined_table
			return 0, fmt.Errorf("load checkpoint: schema %s is not migrated (%w): %w", sub.cfg.Schema, errNoSchema, err)
		}
		return 0, fmt.Errorf("load checkpoint: %w", err)
	}
	return pos, nil
}

var errNoSchema = errors.New("run `millrace migrate` first")

func (sub *subscription) runTerm(ctx context.Context, conn *pgx.Conn) error {
	pos, err := sub.loadCheckpoint(ctx, conn)
	if err != nil {
		return err
	}
	laneCtx, laneCancel := context.WithCancel(context.Background())
	defer laneCancel()
	msgCtx, msgCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer msgCancel()
	t := &term{
		sub:     sub,
		cfg:     sub.cfg,
		conn:    conn,
		wake:    make(chan struct{}, 1),
		acked:   pos,
		flushed: pos,
		rows:    map[*message.Message]*row{},
	}
	t.lanes = lanes.New(laneCtx, lanes.Options{
		MaxInFlight: sub.cfg.MaxInFlight,
		MaxBuffered: max(cmp.Or(sub.cfg.MaxBuffered, 2*sub.cfg.BatchSize), sub.cfg.MaxInFlight),
		Redeliver:   func(p *message.Message) time.Duration { return lanes.RetryDelay(p, defaultRetryDelay) },
		Out:         sub.out,
		// The event is built here, by the lane's worker: off the
		// reading goroutine and in parallel across entities.
		Prepare: func(p *message.Message) {
			t.build(p)
			lanes.Attempt(p)
			p.SetContext(msgCtx)
		},
	})
	stopDrain := context.AfterFunc(ctx, t.lanes.Drain)
	defer stopDrain()
	var notify <-chan struct{}
	if sub.cfg.Notify {
		ch, stop := t.listen(ctx)
		defer stop()
		notify = ch
	}

	err = t.loop(ctx, newReader(sub.cfg, pos, sub.logger), notify)

	t.lanes.Drain()
	if !t.lanes.Wait(sub.cfg.DrainTimeout) {
		sub.logger.Warn("capture: drain timeout; unacked messages will be read again", "timeout", sub.cfg.DrainTimeout)
	}
	msgCancel()
	laneCancel()
	t.lanes.Close()
	if !conn.IsClosed() {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if ferr := t.flush(fctx); ferr != nil {
			err = errors.Join(err, ferr)
		}
		cancel()
	}
	return err
}

func (t *term) signal() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// settle records the router's verdict on the message at e.
func (t *term) settle(e *entry, ok bool) {
	t.mu.Lock()
	t.outstanding--
	if ok {
		e.acked = true
		for len(t.pending) > 0 && t.pending[0].acked {
			t.acked = t.pending[0].pos
			t.pending[0] = nil
			t.pending = t.pending[1:]
		}
	}
	t.mu.Unlock()
	t.signal()
}

// flush writes the checkpoint if it moved.
func (t *term) flush(ctx context.Context) error {
	t.mu.Lock()
	pos := t.acked
	t.mu.Unlock()
	if pos <= t.flushed {
		return nil
	}
	_, err := t.conn.Exec(ctx, "INSERT INTO "+ident(t.cfg.Schema)+`.checkpoints AS c (source, consumer_group, position)
		VALUES ($1, $2, $3)
		ON CONFLICT (source, consumer_group) DO UPDATE SET position = excluded.position, updated_at = now()`,
		t.cfg.Source, t.sub.group, pos)
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	t.flushed = pos
	return nil
}

// loop reads batches while there is room, pushes them into the lanes and
// checkpoints what was acked, until ctx ends or an error.
func (t *term) loop(ctx context.Context, rd *reader, notify <-chan struct{}) error {
	poll := time.NewTimer(0)
	defer poll.Stop()
	flushTimer := time.NewTimer(flushEvery)
	defer flushTimer.Stop()
	readNow := true
	lastFlush := time.Now()
	for {
		if ctx.Err() != nil {
			return nil
		}
		t.mu.Lock()
		acked, outstanding := t.acked, t.outstanding
		t.mu.Unlock()
		if acked > t.flushed && (outstanding == 0 || time.Since(lastFlush) >= flushEvery) {
			qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), queryTimeout)
			err := t.flush(qctx)
			cancel()
			if err != nil {
				return err
			}
			lastFlush = time.Now()
		}
		if readNow && outstanding <= t.cfg.BatchSize {
			qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), queryTimeout)
			rows, more, err := rd.read(qctx, t.conn, t.cfg.BatchSize)
			cancel()
			if err != nil {
				return err
			}
			for i := range rows {
				if !t.push(&rows[i]) {
					return nil
				}
			}
			readNow = more
			poll.Reset(t.cfg.PollInterval)
			continue
		}
		var flushC <-chan time.Time
		if acked > t.flushed {
			flushTimer.Reset(max(flushEvery-time.Since(lastFlush), time.Millisecond))
			flushC = flushTimer.C
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.wake:
		case <-notify:
			readNow = true
		case <-poll.C:
			readNow = true
		case <-flushC:
		}
	}
}

// push hands one row to the lanes; false means the term is stopping.
// The event is built later, by the lanes' Prepare, off the reading
// goroutine and in parallel across entities.
func (t *term) push(r *row) bool {
	p := message.NewMessage(r.id, nil)
	e := &entry{pos: r.pos}
	t.mu.Lock()
	t.pending = append(t.pending, e)
	t.outstanding++
	t.rows[p] = r
	t.mu.Unlock()
	if !t.lanes.Push(t.cfg.key(r), p, func(ok bool) { t.settle(e, ok) }, nil) {
		t.mu.Lock()
		t.outstanding--
		delete(t.rows, p)
		t.mu.Unlock()
		return false
	}
	return true
}

// build fills p with the event of its row.
func (t *term) build(p *message.Message) {
	t.mu.Lock()
	r, ok := t.rows[p]
	delete(t.rows, p)
	t.mu.Unlock()
	if !ok {
		return // a redelivered copy, built already
	}
	msg, err := t.cfg.toMessage(r)
	if err != nil {
		// Unreachable with jsonb columns; still, the change goes on to the
		// router, whose decoder dead-letters it with the reason, rather
		// than being dropped here or stopping the reader.
		t.sub.logger.Error("capture: cannot build the event of a change", "position", r.pos, "err", err)
		body, _ := json.Marshal(map[string]any{"id": r.id, "error": err.Error(), "position": r.pos})
		msg = message.NewMessage(r.id, body)
		msg.Metadata.Set(bus.KeyMetadata, t.cfg.key(r))
	}
	p.UUID, p.Payload, p.Metadata = msg.UUID, msg.Payload, msg.Metadata
}

// listen wakes the reader on notifications of Channel(schema), over a
// connection of its own; it reconnects until stop is called.
func (t *term) listen(ctx context.Context) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for lctx.Err() == nil {
			conn, err := t.sub.connect(lctx)
			if err == nil {
				_, err = conn.Exec(lctx, "LISTEN "+ident(Channel(t.cfg.Schema)))
				if err == nil {
					// Changes made before LISTEN took effect sent
					// nothing this connection saw: read once now.
					select {
					case ch <- struct{}{}:
					default:
					}
				}
				for err == nil {
					if _, err = conn.WaitForNotification(lctx); err == nil {
						select {
						case ch <- struct{}{}:
						default:
						}
					}
				}
				closeConn(conn)
			}
			if lctx.Err() == nil {
				t.sub.logger.Debug("capture: listener stopped; polling only until it reconnects", "err", err)
				runs.Sleep(lctx, t.cfg.LeaseRetry)
			}
		}
	}()
	return ch, func() { cancel(); <-done }
}
