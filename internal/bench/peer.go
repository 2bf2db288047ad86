package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
)

// The peer job is the job users compare routers on: a JetStream stream
// filled before the clock starts, consumed through dedup on a shared
// (Redis) ledger into an action. Nothing captures or publishes while the
// clock runs, so the figures are the consumer's alone. millrace runs it
// on the nats topology; its ceiling is the same job on nats.go and
// go-redis.

// peerTopology is the topology the peer job runs on.
const peerTopology = "nats"

// Names of the peer job's runs.
const (
	PeerNoop    = "peer_noop"
	PeerWebhook = "peer_webhook"
)

// peerRuns are the millrace runs of the peer job: dedup on the Redis
// ledger (the result cache off: the peer's job has none) into a no-op,
// and into a signed webhook.
var peerRuns = []scenarioSpec{
	{name: PeerNoop, title: "pre-filled stream → dedup (Redis) → no-op action", action: noopType,
		dedupCache: true, noCache: true, prefilled: true},
	{name: PeerWebhook, title: "pre-filled stream → dedup (Redis) → signed webhook to a local receiver", action: "webhook",
		dedupCache: true, noCache: true, prefilled: true},
}

// PeerReference is a figure of another router on the same job, measured
// elsewhere: the results quote it, they do not measure it.
type PeerReference struct {
	Name       string  `json:"name"`
	Job        string  `json:"job"`
	EventsPerS float64 `json:"events_per_s"`
	P99MS      float64 `json:"p99_ms,omitempty"`
	Source     string  `json:"source"`
}

// peerReferences are the figures issue 11 quotes for Benthos on this job.
var peerReferences = []PeerReference{
	{Name: "Benthos core v4.60", Job: "pre-filled file-backed JetStream stream → dedupe (in-memory cache) → drop",
		EventsPerS: 25_595, P99MS: 0.9, Source: "measured by the author of issue 11 on a 2-core machine, not in this run"},
	{Name: "Benthos core v4.60", Job: "pre-filled file-backed JetStream stream → dedupe (in-memory cache) → http_client (unsigned)",
		EventsPerS: 9_243, Source: "measured by the author of issue 11 on a 2-core machine, not in this run"},
}

// PeerJob is what the peer job measured.
type PeerJob struct {
	Title  string `json:"title"`
	Status string `json:"status"`
	// GoRuntime is the garbage collector's settings of the runs.
	GoRuntime string `json:"go_runtime"`
	// Ceiling is the same job on the client libraries, in the same run.
	CeilingName string      `json:"ceiling_name"`
	Ceiling     *Figures    `json:"ceiling"`
	Runs        []*Scenario `json:"runs"`
	// References are other routers' figures on the same job, quoted.
	References []PeerReference `json:"references"`
}

// run returns the run called name, or nil.
func (p *PeerJob) run(name string) *Scenario {
	if p == nil {
		return nil
	}
	for _, r := range p.Runs {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// peerSelected reports whether the peer job runs: asked for, and its
// topology among those measured.
func (s *suite) peerSelected() bool {
	return s.selected(ScenarioPeer) && slices.Contains(s.opts.Topologies, peerTopology)
}

// peerJob runs the peer job's ceiling, then millrace's runs when the
// nats topology is in this build.
func (s *suite) peerJob(ctx context.Context) *PeerJob {
	n := s.opts.events()
	p := &PeerJob{
		Title:       fmt.Sprintf("pre-filled JetStream stream (%s events published before the clock starts) → dedup → action", num(float64(n))),
		CeilingName: "nats.go pull consumer (batches of 500) + go-redis SET NX EX per event, pipelined per batch, then ack",
		References:  peerReferences,
		Runs:        []*Scenario{},
		GoRuntime:   s.goRuntime(peerTopology),
	}
	p.Ceiling = s.measure(ctx, "peer ceiling", n, 0, "", func(ctx context.Context, r *recorder, w *window) error {
		return s.peerCeiling(ctx, r, n, w)
	})
	if !s.available(peerTopology) {
		p.Status = StatusNotAvailable
		return p
	}
	p.Status = StatusMeasured
	spec := topoSpec{name: peerTopology, ceiling: ceilJetStreamServer} // no sources: nothing captured
	for _, sc := range peerRuns {
		out := &Scenario{Name: sc.name, Title: sc.title}
		p.Runs = append(p.Runs, out)
		if sc.action == "webhook" && !s.webhookAvailable() {
			out.Status = StatusNotAvailable + " (no webhook action type)"
			continue
		}
		prof := s.profilePath("peer-" + sc.name)
		var signed *int64
		out.Figures = s.measure(ctx, sc.name, n, 0, prof, func(ctx context.Context, r *recorder, w *window) error {
			var err error
			signed, err = s.runMillrace(ctx, spec, sc, r, n, 0, w)
			return err
		})
		out.Signed, out.Ceiling = signed, p.Ceiling
		out.Ratio = ratio(out.Figures, p.Ceiling)
		out.Status = StatusMeasured
		if out.Figures.Error != "" {
			out.Status, p.Status = StatusFailed, StatusFailed
		}
	}
	return p
}

// prefill publishes n events on the bus of cfg's topology, as millrace
// would (the envelope, the id as message UUID, bus.SetRouting), through
// a backend of its own that only publishes, and waits for the bus's
// acks.
func (s *suite) prefill(ctx context.Context, cfg *config.Config, n int) (err error) {
	pcfg := *cfg
	pcfg.Role = "capture"
	b, err := s.opts.Registry.Build(ctx, &pcfg, s.logger)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.Close()) }()
	now := time.Now()
	for from := 0; from < n; from += batchSize {
		msgs := make([]*message.Message, 0, batchSize)
		for i := from; i < min(from+batchSize, n); i++ {
			ev := s.event(i, now)
			body, err := event.Encode(ev)
			if err != nil {
				return err
			}
			m := message.NewMessage(ev.ID, body)
			bus.SetRouting(m, ev)
			msgs = append(msgs, m)
		}
		if err := b.Publisher.Publish(cfg.Router.Topic, msgs...); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

// peerCeiling fills a stream of its own with n envelopes (the clock not
// running), then consumes it: fetch up to 500, SET NX each event id
// with the dedup window as TTL in one pipeline, record the events whose
// key was new, ack each.
func (s *suite) peerCeiling(ctx context.Context, rec *recorder, n int, w *window) error {
	rdb, err := s.redis(ctx)
	if err != nil {
		return err
	}
	nc, err := nats.Connect(s.opts.NATSURL, nats.Name("millrace-bench-peer-ceiling"), nats.Timeout(10*time.Second))
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4*batchSize))
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	id := newID()
	name, subject, prefix := "MRBP_"+strings.ToUpper(id), "mrbp_"+id, "millrace:"+id+":peer:"
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
			s.logger.Warn("bench: delete peer ceiling stream", "stream", name, "err", err)
		}
		s.unlinkKeys(dctx, rdb, id)
	}()
	now := time.Now()
	for from := 0; from < n; from += batchSize {
		if err := s.publishAsync(ctx, js, subject+".e", from, min(from+batchSize, n), now); err != nil {
			return err
		}
	}
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "peer",
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 20_000})
	if err != nil {
		return fmt.Errorf("jetstream: create consumer: %w", err)
	}

	w.begin()
	rec.started(time.Now())
	cctx, stop := context.WithCancel(ctx)
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		msgs := make([]jetstream.Msg, 0, batchSize)
		sets := make([]*redis.BoolCmd, 0, batchSize)
		for cctx.Err() == nil {
			// What the stream holds, up to a batch, at once; a pull
			// that waits only when nothing is left.
			batch, err := cons.FetchNoWait(batchSize)
			if err != nil {
				continue
			}
			msgs = msgs[:0]
			for m := range batch.Messages() {
				msgs = append(msgs, m)
			}
			if len(msgs) == 0 {
				if batch, err = cons.Fetch(batchSize, jetstream.FetchMaxWait(100*time.Millisecond)); err != nil {
					continue
				}
				for m := range batch.Messages() {
					msgs = append(msgs, m)
				}
				if len(msgs) == 0 {
					continue
				}
			}
			pipe := rdb.Pipeline()
			sets = sets[:0]
			for _, m := range msgs {
				sets = append(sets, pipe.SetNX(cctx, prefix+m.Headers().Get(jetstream.MsgIDHeader), "1", 5*time.Minute))
			}
			if _, err := pipe.Exec(cctx); err != nil {
				if cctx.Err() == nil {
					s.logger.Warn("bench: peer ceiling dedup", "err", err)
				}
				continue // unacked: redelivered after AckWait
			}
			for k, m := range msgs {
				if sets[k].Val() {
					h := m.Headers()
					i, _ := strconv.ParseInt(h.Get(hdrIndex), 10, 64)
					ts, _ := strconv.ParseInt(h.Get(hdrTime), 10, 64)
					rec.mark(i, time.Unix(0, ts))
				}
				_ = m.Ack()
			}
		}
	}()
	defer func() { stop(); <-consumed }()
	err = wait(ctx, rec, w.limit, nil, nil, nil)
	w.end()
	return err
}

// unlinkKeys deletes the Redis keys whose names hold run id.
func (s *suite) unlinkKeys(ctx context.Context, rdb *redis.Client, id string) {
	var keys []string
	it := rdb.Scan(ctx, 0, "*"+id+"*", 1000).Iterator()
	for it.Next(ctx) {
		keys = append(keys, it.Val())
	}
	for len(keys) > 0 {
		k := keys[:min(len(keys), 500)]
		keys = keys[len(k):]
		if err := rdb.Unlink(ctx, k...).Err(); err != nil {
			s.logger.Warn("bench: unlink keys", "run", id, "err", err)
			break
		}
	}
	if err := it.Err(); err != nil {
		s.logger.Warn("bench: scan keys", "run", id, "err", err)
	}
}
