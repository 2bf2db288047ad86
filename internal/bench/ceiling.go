package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies/embedded"
)

// The ceilings: the job millrace does (publish n events, consume them,
// acknowledge them), written straight on the client library with
// batching, without Watermill or millrace. Each moves the same envelopes
// as millrace and records each delivery as the no-op action does; the
// consumer runs while the producer publishes.

// ceilingJob is one ceiling, ready to run n events at rate (0:
// saturation).
type ceilingJob struct {
	name string
	run  func(ctx context.Context, rec *recorder, n, rate int, w *window) error
}

func (s *suite) ceiling(spec topoSpec) ceilingJob {
	switch spec.ceiling {
	case ceilJetStreamInProcess:
		return ceilingJob{
			name: "NATS JetStream, server in the process, file storage (nats.go: async publish with Msg-Id, pull consumer, batches of 500, async acks)",
			run:  s.jetStreamInProcess,
		}
	case ceilJetStreamServer:
		return ceilingJob{
			name: "NATS JetStream server, file storage (nats.go: async publish with Msg-Id, pull consumer, batches of 500, async acks)",
			run: func(ctx context.Context, rec *recorder, n, rate int, w *window) error {
				return s.jetStreamJob(ctx, func() (*nats.Conn, error) {
					return nats.Connect(s.opts.NATSURL, nats.Name("millrace-bench-ceiling"), nats.Timeout(10*time.Second))
				}, rec, n, rate, w)
			},
		}
	case ceilRedisStreams:
		return ceilingJob{
			name: "Redis Streams (go-redis: pipelined XADD, XREADGROUP COUNT 500, XACK pipelined with the next read)",
			run:  s.redisJob,
		}
	default:
		return ceilingJob{
			name: "PostgreSQL (pgx: COPY in batches of 500, SELECT ... WHERE id > cursor ORDER BY id LIMIT 1000)",
			run:  s.postgresJob,
		}
	}
}

// Headers and fields that carry a ceiling event's index and send time,
// so that the consumer need not decode the envelope.
const (
	hdrIndex = "Bench-N"
	hdrTime  = "Bench-Ts"
)

// jetStreamInProcess runs the JetStream job against a nats-server
// started in this process with the embedded topology's server options
// (embedded.ServerOptions), embedded.sync included.
func (s *suite) jetStreamInProcess(ctx context.Context, rec *recorder, n, rate int, w *window) error {
	dir, err := os.MkdirTemp("", "millrace-bench-ceiling-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	opts, err := embedded.ServerOptions(config.Embedded{DataDir: dir, Sync: s.opts.EmbeddedSync})
	if err != nil {
		return err
	}
	opts.ServerName = "millrace-bench"
	ns, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("nats server: %w", err)
	}
	go ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		return errors.New("nats server not ready within 10s")
	}
	return s.jetStreamJob(ctx, func() (*nats.Conn, error) {
		return nats.Connect(ns.ClientURL(), nats.InProcessServer(ns), nats.Name("millrace-bench-ceiling"))
	}, rec, n, rate, w)
}

// jetStreamJob publishes asynchronously with Nats-Msg-Id on a stream of
// its own and consumes through a durable pull consumer, acking each
// message without waiting. Publisher and consumer have a connection each,
// so that neither waits behind the other's traffic.
func (s *suite) jetStreamJob(ctx context.Context, connect func() (*nats.Conn, error), rec *recorder, n, rate int, w *window) error {
	nc, err := connect()
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	defer nc.Close()
	cc, err := connect()
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	defer cc.Close()
	var pubErr atomic.Pointer[error]
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4*batchSize),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			pubErr.CompareAndSwap(nil, &err)
		}))
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	id := newID()
	name, subject := "MRBC_"+strings.ToUpper(id), "mrbc_"+id
	s.madeStreams(id)
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subject + ".>"},
		Storage: jetstream.FileStorage, Duplicates: 5 * time.Minute})
	if err != nil {
		return fmt.Errorf("jetstream: create stream: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := js.DeleteStream(dctx, name); err != nil {
			s.logger.Warn("bench: delete ceiling stream", "stream", name, "err", err)
		}
	}()
	if _, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "ceiling",
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 20_000}); err != nil {
		return fmt.Errorf("jetstream: create consumer: %w", err)
	}
	cjs, err := jetstream.New(cc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	cons, err := cjs.Consumer(ctx, name, "ceiling")
	if err != nil {
		return fmt.Errorf("jetstream: consumer: %w", err)
	}
	// A pull that goes missing on a loaded machine is replaced when it
	// expires: 5 s rather than the default 30 s.
	it, err := cons.Messages(jetstream.PullMaxMessages(batchSize), jetstream.PullExpiry(5*time.Second))
	if err != nil {
		return fmt.Errorf("jetstream: consume: %w", err)
	}
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for {
			m, err := it.Next()
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return
			}
			if err != nil {
				// A missed heartbeat on a loaded machine: the iterator
				// pulls again by itself.
				continue
			}
			h := m.Headers()
			i, _ := strconv.ParseInt(h.Get(hdrIndex), 10, 64)
			ts, _ := strconv.ParseInt(h.Get(hdrTime), 10, 64)
			rec.mark(i, time.Unix(0, ts))
			_ = m.Ack()
		}
	}()
	defer func() { it.Stop(); <-consumed }()

	send := func(ctx context.Context, from, to int) error {
		if err := s.publishAsync(ctx, js, subject+".e", from, to, time.Now()); err != nil {
			return err
		}
		if e := pubErr.Load(); e != nil {
			return *e
		}
		return nil
	}
	return run(ctx, rec, n, rate, w, send)
}

// run paces send and waits for rec, inside the measured window.
func run(ctx context.Context, rec *recorder, n, rate int, w *window, send sendFunc) error {
	w.begin()
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	produced := make(chan error, 1)
	go func() { produced <- pace(pctx, rec, n, rate, send) }()
	err := wait(ctx, rec, w.limit, produced, nil, nil)
	w.end()
	return err
}

// redisJob appends with pipelined XADD to a stream of its own and reads
// it through a consumer group, COUNT 500 at a time, sending the XACK of
// one batch in the same round trip as the next read.
func (s *suite) redisJob(ctx context.Context, rec *recorder, n, rate int, w *window) error {
	rdb, err := s.redis(ctx)
	if err != nil {
		return err
	}
	key, group := "millrace:"+newID()+":ceiling", "ceiling"
	if err := rdb.XGroupCreateMkStream(ctx, key, group, "0").Err(); err != nil {
		return fmt.Errorf("redis: create group: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = rdb.Unlink(dctx, key).Err()
	}()
	cctx, stop := context.WithCancel(ctx)
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		var acks []string
		for cctx.Err() == nil {
			pipe := rdb.Pipeline()
			if len(acks) > 0 {
				pipe.XAck(cctx, key, group, acks...)
			}
			read := pipe.XReadGroup(cctx, &redis.XReadGroupArgs{Group: group, Consumer: "c", Streams: []string{key, ">"},
				Count: batchSize, Block: -1})
			_, _ = pipe.Exec(cctx)
			acks = acks[:0]
			streams, err := read.Result()
			if errors.Is(err, redis.Nil) || (err == nil && (len(streams) == 0 || len(streams[0].Messages) == 0)) {
				// Nothing new: wait for it on the server.
				streams, err = rdb.XReadGroup(cctx, &redis.XReadGroupArgs{Group: group, Consumer: "c",
					Streams: []string{key, ">"}, Count: batchSize, Block: 50 * time.Millisecond}).Result()
			}
			if err != nil {
				if !errors.Is(err, redis.Nil) && cctx.Err() == nil {
					s.logger.Warn("bench: redis ceiling read", "err", err)
					time.Sleep(10 * time.Millisecond)
				}
				continue
			}
			for _, st := range streams {
				for _, m := range st.Messages {
					i, _ := strconv.ParseInt(fmt.Sprint(m.Values["n"]), 10, 64)
					ts, _ := strconv.ParseInt(fmt.Sprint(m.Values["ts"]), 10, 64)
					rec.mark(i, time.Unix(0, ts))
					acks = append(acks, m.ID)
				}
			}
		}
	}()
	defer func() { stop(); <-consumed }()

	send := func(ctx context.Context, from, to int) error {
		now := time.Now()
		pipe := rdb.Pipeline()
		for i := from; i < to; i++ {
			evID, body, err := s.encoded(i, now)
			if err != nil {
				return err
			}
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"id", evID, "n", i, "ts", now.UnixNano(), "payload", body}})
		}
		_, err := pipe.Exec(ctx)
		return err
	}
	return run(ctx, rec, n, rate, w, send)
}

// postgresJob COPYs rows into a table of its own and reads them back in
// id order, 1,000 at a time, from a cursor.
func (s *suite) postgresJob(ctx context.Context, rec *recorder, n, rate int, w *window) error {
	pool, err := s.postgres(ctx)
	if err != nil {
		return err
	}
	schema := newID()
	q := pgx.Identifier{schema}.Sanitize()
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+q+"; CREATE TABLE "+q+".ceiling"+
		" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n bigint NOT NULL, ts timestamptz NOT NULL, payload jsonb NOT NULL)"); err != nil {
		return fmt.Errorf("postgres: create table: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, err := pool.Exec(dctx, "DROP SCHEMA "+q+" CASCADE"); err != nil {
			s.logger.Warn("bench: drop ceiling schema", "schema", schema, "err", err)
		}
	}()
	cctx, stop := context.WithCancel(ctx)
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		var cursor int64
		sel := "SELECT id, n, ts, payload FROM " + q + ".ceiling WHERE id > $1 ORDER BY id LIMIT 1000"
		for cctx.Err() == nil {
			rows, err := pool.Query(cctx, sel, cursor)
			got := 0
			if err == nil {
				var id, i int64
				var ts time.Time
				var payload []byte
				_, err = pgx.ForEachRow(rows, []any{&id, &i, &ts, &payload}, func() error {
					rec.mark(i, ts)
					cursor = id
					got++
					return nil
				})
			}
			if err != nil && cctx.Err() == nil {
				s.logger.Warn("bench: postgres ceiling read", "err", err)
			}
			if got < 1000 {
				select {
				case <-cctx.Done():
				case <-time.After(5 * time.Millisecond):
				}
			}
		}
	}()
	defer func() { stop(); <-consumed }()

	send := func(ctx context.Context, from, to int) error {
		now := time.Now()
		rows := make([][]any, 0, to-from)
		for i := from; i < to; i++ {
			_, body, err := s.encoded(i, now)
			if err != nil {
				return err
			}
			rows = append(rows, []any{int64(i), now, json.RawMessage(body)})
		}
		_, err := pool.CopyFrom(ctx, pgx.Identifier{schema, "ceiling"}, []string{"n", "ts", "payload"}, pgx.CopyFromRows(rows))
		return err
	}
	return run(ctx, rec, n, rate, w, send)
}
