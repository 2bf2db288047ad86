package cli

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	natsgo "github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/millrace/millrace/bus/capture"
	"github.com/millrace/millrace/bus/jetstream"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/router"
	"github.com/millrace/millrace/topologies"
	redistopo "github.com/millrace/millrace/topologies/redis"
)

// recordSpan is which part of the bus `millrace record` reads.
type recordSpan struct {
	since   time.Time
	fromSeq int64
	limit   int
	// until, when set, is when the tap of new events ends: --follow
	// after the start.
	until  time.Time
	follow time.Duration
	// admin reaches the admin API of the running process whose bus is
	// inside it (embedded); addr and tokenEnv default to the config's.
	admin dlqClient
}

func recordCmd(o Options, stdout, stderr io.Writer) *cobra.Command {
	var path, out string
	var since time.Duration
	var span recordSpan
	cmd := &cobra.Command{
		Use:   "record -c FILE --out EVENTS.jsonl [--since DURATION | --from-seq N] [--limit N] [--follow DURATION]",
		Short: "Write the events on the bus to a file, one envelope per line, without disturbing consumers",
		Long: `Write the events on the config's bus to a file, one JSON envelope per
line (--out - writes to stdout), for millrace try. The bus is read as it
is, without a consumer group or acks: consumers and their pending
events are not disturbed. With --follow D it then taps the events that
arrive, for D, and stops (the events the bus holds are read first; add
--from-seq or --since to skip them).

  nats, multidb  an ordered (ephemeral) consumer on the stream's events
                 subjects; --from-seq N starts after stream sequence N
  redis          XRANGE on the events stream (every partition stream,
                 merged in time order); --from-seq is not supported
  postgres       SELECTs on each source's change log, in position
                 order; --from-seq is a change-log position

  embedded       the bus lives inside the running process: record asks
                 its admin API (GET /v1/record, an ordered consumer
                 there) at http.addr, or --addr, with the token in the
                 variable http.admin_token_env names, or --token-env;
                 --from-seq N starts after stream sequence N`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if since > 0 && span.fromSeq > 0 {
				return &exitError{code: ExitInvalid, err: errors.New("--since and --from-seq cannot be used together")}
			}
			if since > 0 {
				span.since = time.Now().Add(-since)
			}
			if span.follow < 0 {
				return &exitError{code: ExitInvalid, err: errors.New("--follow must not be negative")}
			}
			if span.follow > 0 {
				span.until = time.Now().Add(span.follow)
			}
			cfg, err := load(o, path)
			if err != nil {
				return err
			}
			var w io.Writer = stdout
			if out != "-" {
				f, err := os.Create(out)
				if err != nil {
					return &exitError{code: ExitInvalid, err: fmt.Errorf("--out: %w", err)}
				}
				defer f.Close()
				w = f
			}
			bw := bufio.NewWriter(w)
			n := 0
			write := func(envelope []byte) error {
				n++
				if _, err := bw.Write(envelope); err != nil {
					return err
				}
				return bw.WriteByte('\n')
			}
			if err := record(cmd.Context(), cfg, span, write); err != nil {
				return err
			}
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("--out: %w", err)
			}
			fmt.Fprintf(stderr, "recorded %d event(s) from the %s topology\n", n, cfg.Topology)
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "config file (TOML)")
	cmd.Flags().StringVar(&out, "out", "", "file to write the envelopes to (- for stdout)")
	cmd.Flags().DurationVar(&since, "since", 0, "only events added within this duration (e.g. 1h)")
	cmd.Flags().Int64Var(&span.fromSeq, "from-seq", 0, "start after this bus position: a stream sequence (nats, multidb) or a change-log position (postgres)")
	cmd.Flags().IntVar(&span.limit, "limit", 0, "at most this many events (0: all)")
	cmd.Flags().DurationVar(&span.follow, "follow", 0, "then keep recording the events that arrive, for this long (e.g. 10m)")
	cmd.Flags().StringVar(&span.admin.addr, "addr", "", "embedded: address of the running millrace (default: the config's http.addr)")
	cmd.Flags().StringVar(&span.admin.tokenEnv, "token-env", "", "embedded: variable holding the admin token (default: the config's http.admin_token_env)")
	_ = cmd.MarkFlagRequired("config")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// record reads the bus of cfg's topology and calls write with each
// envelope, oldest first.
func record(ctx context.Context, cfg *config.Config, span recordSpan, write func([]byte) error) error {
	switch cfg.Topology {
	case "nats", "multidb":
		nc, err := natsgo.Connect(cfg.NATS.URL, natsgo.Name("millrace record"), natsgo.Timeout(10*time.Second))
		if err != nil {
			return &exitError{code: ExitInvalid, err: fmt.Errorf("nats.url: %w", err)}
		}
		defer nc.Close()
		js, err := njs.New(nc)
		if err != nil {
			return fmt.Errorf("nats: %w", err)
		}
		return jetstream.Export(ctx, js, topologies.JetStreamConfig(cfg), cfg.Router.Topic, uint64(max(span.fromSeq, 0)),
			span.since, span.until, span.limit, func(_ uint64, p []byte) error { return write(p) })
	case "redis":
		if span.fromSeq > 0 {
			return &exitError{code: ExitInvalid, err: errors.New("--from-seq: the redis topology's positions are entry ids; use --since")}
		}
		client, err := topologies.NewRedisClient(cfg.Redis)
		if err != nil {
			return &exitError{code: ExitInvalid, err: err}
		}
		if client == nil {
			return &exitError{code: ExitInvalid, err: errors.New("redis.url: not set")}
		}
		defer client.Close()
		return redistopo.BusConfig(cfg).Export(ctx, client, cfg.Router.Topic, span.since, span.until, span.limit,
			func(_ string, p []byte) error { return write(p) })
	case "postgres":
		return recordChangeLogs(ctx, cfg, span, write)
	case "embedded":
		return recordAdmin(ctx, cfg, span, write)
	}
	return &exitError{code: ExitInvalid, err: fmt.Errorf("topology: %q cannot be recorded from outside its process", cfg.Topology)}
}

// changeLog is one change log that record reads: the config key of its
// database, the database's URL, and where its log is.
type changeLog struct {
	key, url string
	capture  capture.Config
}

// errLimit stops the taps of the change logs once --limit is reached.
var errLimit = errors.New("limit reached")

// tapChangeLogs is recordChangeLogs with --follow: every change log is
// read and then tapped at once, until span.until; their lines
// interleave, each log's in its own order.
func tapChangeLogs(ctx context.Context, logs []changeLog, span recordSpan, write func([]byte) error) error {
	var (
		mu   sync.Mutex
		n    int
		wg   sync.WaitGroup
		errs = make([]error, len(logs))
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i, l := range logs {
		wg.Go(func() {
			pool, err := pgxpool.New(ctx, l.url)
			if err != nil {
				errs[i] = &exitError{code: ExitInvalid, err: fmt.Errorf("%s: %w", l.key, err)}
				cancel()
				return
			}
			defer pool.Close()
			err = l.capture.Export(ctx, pool, span.fromSeq, span.since, span.until, 0, func(_ int64, p []byte) error {
				mu.Lock()
				defer mu.Unlock()
				if span.limit > 0 && n >= span.limit {
					return errLimit
				}
				n++
				return write(p)
			})
			if err != nil && !errors.Is(err, errLimit) && !(errors.Is(err, context.Canceled) && ctx.Err() != nil) {
				errs[i] = fmt.Errorf("%s: %w", l.key, err)
			}
			if err != nil {
				cancel()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// recordChangeLogs exports the change log of each trigger source, one
// after another (postgres.url's own when there is no source); with
// several sources the file holds each source's changes in order, not
// one order across sources.
func recordChangeLogs(ctx context.Context, cfg *config.Config, span recordSpan, write func([]byte) error) error {
	var logs []changeLog
	for i, s := range cfg.Sources {
		if s.Capture == config.CaptureWAL {
			continue // its change log stays empty
		}
		url, err := config.Secret(s.PostgresURL, s.PostgresURLEnv)
		if err != nil {
			return &exitError{code: ExitInvalid, err: fmt.Errorf("%s.postgres_url_env: %w", config.Index("sources", i), err)}
		}
		logs = append(logs, changeLog{config.Index("sources", i), url, topologies.CaptureConfig(cfg, s)})
	}
	if len(cfg.Sources) == 0 {
		url, err := config.Secret(cfg.Postgres.URL, cfg.Postgres.URLEnv)
		if err != nil {
			return &exitError{code: ExitInvalid, err: fmt.Errorf("postgres.url_env: %w", err)}
		}
		logs = append(logs, changeLog{"postgres.url", url, capture.Config{Source: "postgres", Schema: cfg.Postgres.Schema}})
	}
	if !span.until.IsZero() {
		return tapChangeLogs(ctx, logs, span, write)
	}
	left := span.limit
	for _, l := range logs {
		pool, err := pgxpool.New(ctx, l.url)
		if err != nil {
			return &exitError{code: ExitInvalid, err: fmt.Errorf("%s: %w", l.key, err)}
		}
		n := 0
		err = l.capture.Export(ctx, pool, span.fromSeq, span.since, time.Time{}, left, func(_ int64, p []byte) error {
			n++
			return write(p)
		})
		pool.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", l.key, err)
		}
		if span.limit > 0 {
			if left -= n; left <= 0 {
				return nil
			}
		}
	}
	return nil
}

// recordAdmin reads the bus of the running process through its admin
// API, GET /v1/record, which streams one envelope per line and says in a
// trailer when it stopped early.
func recordAdmin(ctx context.Context, cfg *config.Config, span recordSpan, write func([]byte) error) error {
	c := span.admin
	c.name = "record"
	if c.addr == "" {
		c.addr = localAddr(cfg.HTTP.Addr)
	}
	if c.tokenEnv == "" {
		c.tokenEnv = cfg.HTTP.AdminTokenEnv
	}
	if c.tokenEnv == "" {
		return usageError("http.admin_token_env: not set; the %s topology is recorded through the admin API of the running process, which needs it (or give --token-env)", cfg.Topology)
	}
	q := url.Values{}
	if span.fromSeq > 0 {
		q.Set("from_seq", strconv.FormatInt(span.fromSeq, 10))
	}
	if !span.since.IsZero() {
		q.Set("since", span.since.UTC().Format(time.RFC3339Nano))
	}
	if span.limit > 0 {
		q.Set("limit", strconv.Itoa(span.limit))
	}
	if span.follow > 0 {
		q.Set("follow", span.follow.String())
	}
	resp, err := c.send(ctx, http.MethodGet, "/v1/record?"+q.Encode(), nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	n := 0
	for {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			n++
			if err := write(bytes.TrimRight(line, "\r\n")); err != nil {
				return fmt.Errorf("--out: %w", err)
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("record: read after %d event(s): %w", n, err)
		}
	}
	// Trailers are in once the body has been read to its end.
	if msg := resp.Trailer.Get(router.RecordErrorHeader); msg != "" {
		return fmt.Errorf("record: the server stopped after %d event(s): %s", n, msg)
	}
	return nil
}

// localAddr is the address to reach a process listening on addr from
// the same host: a wildcard or empty host becomes loopback.
func localAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}
