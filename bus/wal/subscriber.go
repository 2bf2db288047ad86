package wal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/bus/lanes"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/internal/runs"
)

// Config is a WAL capture's config, built from config.Source by the
// topologies. Zero fields take their defaults.
type Config struct {
	// Source names the database: the events' "source" field. Required.
	Source string
	// Slot and Publication are the names of the replication slot and
	// of the publication. Required.
	Slot, Publication string
	// Entities maps a table ("schema.table") to its entity type. Default:
	// the table name without its schema.
	Entities map[string]string
	// MaxInFlight bounds the messages released at once. Default 64.
	MaxInFlight int
	// MaxPending bounds the messages decoded and not yet acked: the
	// decoder waits (answering the server's keepalives) while that many
	// are out, so that a large transaction is never held whole. Default
	// 8 × MaxInFlight, at least 512.
	MaxPending int
	// MaxRetainedWAL is the WAL the slot may retain before a warning.
	// Default 1 GiB.
	MaxRetainedWAL int64
	// StatusInterval is how often the confirmed position is sent when
	// nothing else asks for it. Default 1s.
	StatusInterval time.Duration
	// RetainedInterval is how often the slot's retained WAL is measured.
	// Default 10s.
	RetainedInterval time.Duration
	// RetryInterval is the first wait of a standby before it tries the
	// slot again; it doubles up to 5s. Default 500ms.
	RetryInterval time.Duration
	// DrainTimeout bounds how long stopping waits for released messages
	// to be acked. Default 10s.
	DrainTimeout time.Duration
}

func (c *Config) setDefaults() {
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 64
	}
	if c.MaxPending <= 0 {
		c.MaxPending = max(8*c.MaxInFlight, 512)
	}
	if c.MaxRetainedWAL <= 0 {
		c.MaxRetainedWAL = 1 << 30
	}
	if c.StatusInterval <= 0 {
		c.StatusInterval = time.Second
	}
	if c.RetainedInterval <= 0 {
		c.RetainedInterval = 10 * time.Second
	}
	if c.RetryInterval <= 0 {
		c.RetryInterval = 500 * time.Millisecond
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 10 * time.Second
	}
}

// Validate reports every problem of c.
func (c Config) Validate() error {
	var errs []error
	if c.Source == "" {
		errs = append(errs, errors.New("wal: source is required"))
	}
	if c.Slot == "" {
		errs = append(errs, errors.New("wal: slot is required"))
	}
	if c.Publication == "" {
		errs = append(errs, errors.New("wal: publication is required"))
	}
	return errors.Join(errs...)
}

// Metrics are the WAL captures' gauges; one value serves every source of
// a process.
type Metrics struct {
	// Retained is the WAL each slot holds back, by source.
	Retained *prometheus.GaugeVec
}

// NewMetrics returns unregistered metrics.
func NewMetrics() *Metrics {
	return &Metrics{Retained: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "millrace_capture_wal_retained_bytes",
		Help: "WAL the source's replication slot retains (pg_current_wal_lsn() - restart_lsn), in bytes.",
	}, []string{"source"})}
}

// Collectors are the metrics to register.
func (m *Metrics) Collectors() []prometheus.Collector { return []prometheus.Collector{m.Retained} }

// Subscriber streams a database's changes from a logical replication slot
// (pgoutput) as a Watermill subscriber. Subscribe's topic is not used:
// the slot is the consumer.
//
// Messages carry the event JSON, with an id derived from the commit LSN
// and the change's position in its transaction, and bus.KeyMetadata set.
// Messages of one entity are released one after another in commit order,
// different entities in parallel up to MaxInFlight. The slot's confirmed
// position moves only to the end of a transaction whose every message,
// and every earlier one, was acked: a crash replays the unacked tail
// under the same ids. PostgreSQL lets one process stream a slot at a
// time; the others stand by and take over when it goes.
type Subscriber struct {
	pool    *pgxpool.Pool
	cfg     Config
	logger  *slog.Logger
	metrics *Metrics

	runs runs.Set
}

var _ message.Subscriber = (*Subscriber)(nil)

// NewSubscriber returns a WAL capture of pool's database. It does not own
// the pool; it streams over a replication connection of its own, built
// from the pool's config. metrics may be nil.
func NewSubscriber(pool *pgxpool.Pool, cfg Config, metrics *Metrics, logger *slog.Logger) *Subscriber {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if metrics == nil {
		metrics = NewMetrics()
	}
	cfg.setDefaults()
	return &Subscriber{pool: pool, cfg: cfg, logger: logger, metrics: metrics}
}

// Subscribe starts streaming. The channel is closed once ctx ends or
// Close is called and the released messages settled (or DrainTimeout
// passed).
func (s *Subscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	if err := s.cfg.Validate(); err != nil {
		return nil, err
	}
	sub := &subscription{
		s: s, cfg: s.cfg, out: make(chan *message.Message),
		logger: s.logger.With("source", s.cfg.Source, "slot", s.cfg.Slot),
	}
	err := s.runs.Start(ctx, func(ctx context.Context) {
		go sub.watchRetained(ctx)
		sub.run(ctx)
	})
	if err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	return sub.out, nil
}

// Close stops every subscription and waits for them.
func (s *Subscriber) Close() error {
	s.runs.Close()
	return nil
}

type subscription struct {
	s      *Subscriber
	cfg    Config
	logger *slog.Logger
	out    chan *message.Message
}

// errSlotActive is START_REPLICATION's answer while another process
// streams the slot.
func slotActive(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55006" // object_in_use: "replication slot ... is active for PID"
}

// run connects and streams until ctx ends; while another process holds
// the slot it retries with backoff.
func (sub *subscription) run(ctx context.Context) {
	defer close(sub.out)
	wait, standby := sub.cfg.RetryInterval, false
	for ctx.Err() == nil {
		conn, err := sub.connect(ctx)
		if err == nil {
			err = pglogrepl.StartReplication(ctx, conn, sub.cfg.Slot, 0, pglogrepl.StartReplicationOptions{
				PluginArgs: []string{"proto_version '1'", "publication_names '" + sub.cfg.Publication + "'", "messages 'true'"},
			})
			if err == nil {
				if standby {
					sub.logger.Info("wal capture: active: took over the slot")
				} else {
					sub.logger.Info("wal capture: active: streaming the slot")
				}
				standby = false
				wait = sub.cfg.RetryInterval
				err = sub.stream(ctx, conn)
			}
			closeConn(conn)
		}
		if ctx.Err() != nil {
			break
		}
		if slotActive(err) {
			// Another process streams the slot: stand by, quietly.
			if !standby {
				sub.logger.Info("wal capture: standby: another process streams the slot")
			}
			sub.logger.Debug("wal capture: slot in use; retrying", "err", err, "wait", wait)
			standby = true
		} else if err != nil {
			sub.logger.Warn("wal capture: streaming failed; retrying", "err", err, "wait", wait)
		}
		runs.Sleep(ctx, wait)
		wait = min(2*wait, 5*time.Second)
	}
	sub.logger.Info("wal capture: stopped")
}

func (sub *subscription) connect(ctx context.Context) (*pgconn.PgConn, error) {
	cc := sub.s.pool.Config().ConnConfig.Config.Copy()
	params := make(map[string]string, len(cc.RuntimeParams)+4)
	for k, v := range cc.RuntimeParams {
		params[k] = v
	}
	params["replication"] = "database"
	params["application_name"] = "millrace capture wal " + sub.cfg.Source
	// The text values are parsed (timestamps) as DateStyle ISO writes them.
	params["DateStyle"] = "ISO"
	params["IntervalStyle"] = "postgres"
	delete(params, "search_path")
	cc.RuntimeParams = params
	return pgconn.ConnectConfig(ctx, cc)
}

func closeConn(conn *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// watchRetained measures the WAL the slot retains, sets the gauge and
// warns when it passes MaxRetainedWAL. Standbys measure too: the slot is
// shared.
func (sub *subscription) watchRetained(ctx context.Context) {
	g := sub.s.metrics.Retained.WithLabelValues(sub.cfg.Source)
	over := false
	for ctx.Err() == nil {
		var n *int64
		err := sub.s.pool.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
			FROM pg_replication_slots WHERE slot_name = $1`, sub.cfg.Slot).Scan(&n)
		if err == nil && n != nil {
			g.Set(float64(*n))
			switch {
			case *n > sub.cfg.MaxRetainedWAL && !over:
				sub.logger.Warn("wal capture: the slot retains more WAL than max_retained_wal; PostgreSQL keeps it until the capture catches up (or the slot is dropped: millrace unwatch)",
					"retained_bytes", *n, "max_retained_wal", sub.cfg.MaxRetainedWAL)
				over = true
			case *n <= sub.cfg.MaxRetainedWAL && over:
				sub.logger.Info("wal capture: retained WAL back under max_retained_wal", "retained_bytes", *n)
				over = false
			}
		} else if err != nil && ctx.Err() == nil {
			sub.logger.Debug("wal capture: cannot measure the retained WAL", "err", err)
		}
		runs.Sleep(ctx, sub.cfg.RetainedInterval)
	}
}

// stream is one holding of the slot.
type stream struct {
	sub   *subscription
	cfg   Config
	conn  *pgconn.PgConn
	dec   *decoder
	lanes *lanes.Lanes

	wake chan struct{}

	mu          sync.Mutex
	pending     []*entry      // decode order; the head is the oldest unacked
	acked       pglogrepl.LSN // every transaction ending here or before was acked
	outstanding int           // pushed, not settled

	inTx      bool
	confirmed pglogrepl.LSN // last position sent as flushed

	row rowChange // the row change being decoded
}

// entry is a pushed message, or (end set) the end of a transaction,
// which counts as acked once every entry before it is.
type entry struct {
	acked bool
	end   pglogrepl.LSN
}

func (sub *subscription) stream(ctx context.Context, conn *pgconn.PgConn) error {
	laneCtx, laneCancel := context.WithCancel(context.Background())
	defer laneCancel()
	msgCtx, msgCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer msgCancel()
	st := &stream{
		sub: sub, cfg: sub.cfg, conn: conn,
		dec:  newDecoder(&sub.cfg, sub.keyLookup),
		wake: make(chan struct{}, 1),
		lanes: lanes.New(laneCtx, lanes.Options{
			MaxInFlight: sub.cfg.MaxInFlight,
			MaxBuffered: sub.cfg.MaxPending + sub.cfg.MaxInFlight + 1024,
			Redeliver:   func(p *message.Message) time.Duration { return lanes.RetryDelay(p, defaultRetryDelay) },
			Out:         sub.out,
			Prepare: func(p *message.Message) {
				lanes.Attempt(p)
				p.SetContext(msgCtx)
			},
		}),
	}
	stopDrain := context.AfterFunc(ctx, st.lanes.Drain)
	defer stopDrain()
	err := st.loop(ctx)
	st.lanes.Drain()
	if !st.lanes.Wait(sub.cfg.DrainTimeout) {
		sub.logger.Warn("wal capture: drain timeout; unacked changes will be streamed again", "timeout", sub.cfg.DrainTimeout)
	}
	msgCancel()
	laneCancel()
	st.lanes.Close()
	// The last word: what was acked while draining.
	if serr := st.sendStatus(false); serr != nil && err == nil && ctx.Err() == nil {
		err = serr
	}
	return err
}

func (sub *subscription) keyLookup(ctx context.Context, table string) ([]string, error) {
	t, ok, err := lookupTable(ctx, sub.s.pool, table)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s: %w", table, errNoTable)
	}
	return t.Key, nil
}

func (st *stream) signal() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// settle records the router's verdict and moves the acked position over
// every leading acked entry.
func (st *stream) settle(e *entry, ok bool) {
	st.mu.Lock()
	st.outstanding--
	if ok {
		e.acked = true
		st.advance()
	}
	st.mu.Unlock()
	st.signal()
}

// advance pops the leading acked entries; st.mu is held.
func (st *stream) advance() {
	for len(st.pending) > 0 && st.pending[0].acked {
		if e := st.pending[0].end; e > st.acked {
			st.acked = e
		}
		st.pending[0] = nil
		st.pending = st.pending[1:]
	}
}

// sendStatus tells the server what may be released: the end of the last
// transaction fully acked.
func (st *stream) sendStatus(reply bool) error {
	st.mu.Lock()
	pos := st.acked
	st.mu.Unlock()
	if pos > st.confirmed {
		st.confirmed = pos
	}
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), st.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: st.confirmed, ReplyRequested: reply,
	})
	if err != nil {
		return fmt.Errorf("send status: %w", err)
	}
	return nil
}

// loop receives and decodes until ctx ends or the connection fails.
func (st *stream) loop(ctx context.Context) error {
	// Receiving stops at the next status time through the connection's
	// read deadline, set when that time moves, not through a context per
	// receive: a deadline context and pgconn's watch of it cost a timer
	// and several allocations for each message, about one per change.
	// Ending ctx moves the deadline to now; a ctx that ends before the
	// deadline is set again is seen by the check after setting it.
	nc := st.conn.Conn()
	stop := context.AfterFunc(ctx, func() { _ = nc.SetReadDeadline(time.Now()) })
	defer func() {
		if stop() {
			_ = nc.SetReadDeadline(time.Time{})
		}
	}()
	var deadline time.Time
	nextStatus := time.Now().Add(st.cfg.StatusInterval)
	for ctx.Err() == nil {
		// Back-pressure: while MaxPending messages are out, wait for
		// acks, still confirming in time.
		for ctx.Err() == nil {
			st.mu.Lock()
			full := st.outstanding >= st.cfg.MaxPending
			st.mu.Unlock()
			if !full {
				break
			}
			select {
			case <-ctx.Done():
			case <-st.wake:
			case <-time.After(time.Until(nextStatus)):
			}
			if !time.Now().Before(nextStatus) {
				if err := st.sendStatus(false); err != nil {
					return err
				}
				nextStatus = time.Now().Add(st.cfg.StatusInterval)
			}
		}
		if !time.Now().Before(nextStatus) {
			if err := st.sendStatus(false); err != nil {
				return err
			}
			nextStatus = time.Now().Add(st.cfg.StatusInterval)
		}
		if !nextStatus.Equal(deadline) {
			deadline = nextStatus
			if err := nc.SetReadDeadline(deadline); err != nil {
				return fmt.Errorf("receive: set deadline: %w", err)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		raw, err := st.conn.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) && ctx.Err() == nil {
				continue
			}
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch m := raw.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication: %w", pgconn.ErrorResponseToPgError(m))
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return fmt.Errorf("keepalive: %w", err)
				}
				st.idle(ka.ServerWALEnd)
				if ka.ReplyRequested {
					if err := st.sendStatus(false); err != nil {
						return err
					}
					nextStatus = time.Now().Add(st.cfg.StatusInterval)
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return fmt.Errorf("xlog data: %w", err)
				}
				if err := st.handle(ctx, xld); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// idle lets the confirmed position follow the server's WAL end while
// nothing is decoded and unacked: WAL that carries no change for the
// publication (other tables, other databases) is then released too.
func (st *stream) idle(walEnd pglogrepl.LSN) {
	if st.inTx {
		return
	}
	st.mu.Lock()
	if len(st.pending) == 0 && walEnd > st.acked {
		st.acked = walEnd
	}
	st.mu.Unlock()
}

// handle decodes one pgoutput message and pushes its events.
func (st *stream) handle(ctx context.Context, xld pglogrepl.XLogData) error {
	dec := st.dec
	if isRowChange(xld.WALData) {
		c := &st.row
		if err := c.read(xld.WALData); err != nil {
			return fmt.Errorf("decode pgoutput at %s: %w", xld.WALStart, err)
		}
		typ := event.Insert
		switch c.op {
		case 'U':
			typ = event.Update
		case 'D':
			typ = event.Delete
		}
		return st.push(dec.change(typ, c.relID, c.oldType, c.old, c.new))
	}
	m, err := pglogrepl.Parse(xld.WALData)
	if err != nil {
		return fmt.Errorf("decode pgoutput at %s: %w", xld.WALStart, err)
	}
	switch m := m.(type) {
	case *pglogrepl.RelationMessage:
		return dec.relation(ctx, m)
	case *pglogrepl.BeginMessage:
		st.inTx = true
		dec.begin(m)
	case *pglogrepl.CommitMessage:
		st.inTx = false
		st.mu.Lock()
		st.pending = append(st.pending, &entry{acked: true, end: m.TransactionEndLSN})
		st.advance()
		st.mu.Unlock()
		st.signal()
	case *pglogrepl.TruncateMessage:
		// The publication does not publish TRUNCATE; a publication made
		// by hand may. There is no event type for it: say so, skip it.
		st.sub.logger.Info("wal capture: TRUNCATE is not captured; skipped", "relations", len(m.RelationIDs), "lsn", xld.WALStart)
		dec.index++
	case *pglogrepl.LogicalDecodingMessage:
		if m.Prefix != BackfillPrefix {
			return nil
		}
		index := dec.index
		dec.index++
		msgs, err := dec.backfill(ctx, m)
		if err != nil {
			st.sub.logger.Error("wal capture: cannot decode a backfill message; it goes to the dead letters", "lsn", m.LSN, "err", err)
			msgs = []*message.Message{dec.undecodable("read-error", m.LSN, index, err)}
		}
		for _, msg := range msgs {
			if err := st.push(msg, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// push hands one message to the lanes. A change that cannot be built
// (a message out of protocol) stops the stream: decoding further would
// build events on a wrong relation cache.
func (st *stream) push(msg *message.Message, err error) error {
	if err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	e := &entry{}
	st.mu.Lock()
	st.pending = append(st.pending, e)
	st.outstanding++
	st.mu.Unlock()
	if !st.lanes.Push(msg.Metadata.Get(bus.KeyMetadata), msg, func(ok bool) { st.settle(e, ok) }, nil) {
		st.mu.Lock()
		st.outstanding--
		st.mu.Unlock()
		return errStopping
	}
	return nil
}

var errStopping = errors.New("wal capture: stopping")

// defaultRetryDelay is the wait before a nacked change that asked for no
// delay is released again, as in bus/capture.
const defaultRetryDelay = 250 * time.Millisecond

// String names the subscriber in logs.
func (s *Subscriber) String() string {
	return "wal capture " + s.cfg.Source + " (" + strings.Join([]string{s.cfg.Slot, s.cfg.Publication}, ", ") + ")"
}
