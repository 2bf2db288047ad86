package jetstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Pull request timing. A request lives pullExpiry; while it waits with
// nothing to deliver the server sends an idle heartbeat every
// pullHeartbeat, so that a request the server lost (a restart, a
// reconnection) shows as silence and is replaced after two missed
// heartbeats instead of at its expiry.
const (
	pullExpiry    = 5 * time.Second
	pullHeartbeat = time.Second
)

// idleAfter is how long a consumer may receive nothing, with messages
// pending on the server and room for them here, before it counts as
// idle (Metrics.IdlePartitions) and a warning is logged.
const idleAfter = time.Second

// Headers of the server's status messages on a pull request's inbox.
const (
	statusHeader      = "Status"
	descriptionHeader = "Description"
	pendingMsgsHeader = "Nats-Pending-Messages"
)

// Metrics are the JetStream bus's metrics; one value serves every
// subscription of a process, and its connection (ConnHandlers).
type Metrics struct {
	// IdlePartitions counts the consumers read (the partitions held, or
	// a topic's one consumer without partitions) that have received
	// nothing for over idleAfter while the server had messages pending
	// for them and the subscriber had room: it stays 0 unless pulling
	// stalls.
	IdlePartitions prometheus.Gauge
	// AsyncErrors counts the errors the NATS connection reported
	// asynchronously, by kind: AsyncErrorSlowConsumer each time a
	// subscription starts dropping messages because its handler fell
	// behind (once per episode, not per message dropped), AsyncErrorOther
	// for the rest (a permission violation, an error from the server).
	AsyncErrors *prometheus.CounterVec
}

// Kinds of Metrics.AsyncErrors.
const (
	AsyncErrorSlowConsumer = "slow_consumer"
	AsyncErrorOther        = "other"
)

// NewMetrics returns unregistered metrics.
func NewMetrics() *Metrics {
	m := &Metrics{
		IdlePartitions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "millrace_bus_idle_partitions",
			Help: "JetStream consumers (partitions held, or a topic's consumer) idle for over a second " +
				"with messages pending on the server and room in the subscriber; nonzero means pulling stalled.",
		}),
		AsyncErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "millrace_bus_async_errors_total",
			Help: "Errors the NATS connection reported asynchronously, by kind: slow_consumer (a subscription " +
				"started dropping messages; JetStream redelivers them after ack_wait) or other.",
		}, []string{"kind"}),
	}
	// Both series exist from the start, at 0, so that a rate() over them
	// sees the first error.
	for _, k := range []string{AsyncErrorSlowConsumer, AsyncErrorOther} {
		m.AsyncErrors.WithLabelValues(k)
	}
	return m
}

// Collectors are the metrics to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.IdlePartitions, m.AsyncErrors}
}

// errPullStopped is returned by next once stop was called.
var errPullStopped = errors.New("jetstream: pull stopped")

// puller reads one durable pull consumer over core NATS, keeping pull
// requests outstanding for up to batch messages: each time half of
// them has arrived it asks for the rest, and when the server ends a
// request (its expiry) the messages it still owed are asked for again at
// once.
//
// It stands in for nats.go's Consumer.Messages, whose iterator (v1.55.0)
// can stop pulling for the length of a heartbeat check: it skips sending
// a pull while its previous one is still being published by another
// goroutine, and looks again only when a message or a status arrives. If
// the server answers that previous pull, and every message it owed is
// taken, before that goroutine notes the publish done (a few
// milliseconds of scheduling delay on a busy machine suffice), nothing
// is outstanding, nothing arrives, and Next waits until its missed
// heartbeat timer resets its count: 5 s with our expiry. Partitions,
// whose share of the read-ahead is a few dozen messages, pull every few
// messages and met it in a few runs out of a hundred. Here the pull is
// sent by the goroutine that counts what it owes, so the count is exact.
//
// next and stop are for one goroutine; ack, nak and inProgress may be
// called from any.
type puller struct {
	nc       *nats.Conn
	subject  string // $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>
	consumer string
	batch    int
	logger   *slog.Logger
	metrics  *Metrics

	inbox string
	sub   *nats.Subscription
	msgs  chan *nats.Msg
	done  chan struct{}
	timer *time.Timer

	// owed counts the messages asked for and neither received nor
	// reported left over by the server when it ended their request.
	owed int
	// retryAt, when set, holds the next pull back after an error.
	retryAt time.Time
	// pending is the server's count of messages left for the consumer,
	// as of the consumer's info at first, then of last, the latest
	// message received (read from it only when needed).
	pending int64
	last    *nats.Msg
	// idle is set while the consumer counts in Metrics.IdlePartitions.
	idle bool
}

// newPuller subscribes to an inbox for the consumer's messages; the
// first pull goes out with the first next.
func newPuller(js jetstream.JetStream, stream, consumer string, batch int, pending int64,
	metrics *Metrics, logger *slog.Logger) (*puller, error) {
	nc := js.Conn()
	p := &puller{
		nc: nc, subject: apiPrefix(js) + "CONSUMER.MSG.NEXT." + stream + "." + consumer,
		consumer: consumer, batch: max(batch, 1), logger: logger, metrics: metrics,
		inbox: nc.NewInbox(),
		// Room for every message owed and the server's status
		// messages, three times over: the count is reset after two
		// missed heartbeats, which can happen twice while a slow
		// server still holds a request (pullExpiry), and what is asked
		// for again comes on top. A full channel drops messages
		// (nats.go's slow consumer): they come back after the ack wait.
		msgs:    make(chan *nats.Msg, 3*max(batch, 1)+64),
		done:    make(chan struct{}),
		timer:   time.NewTimer(time.Hour),
		pending: pending,
	}
	p.timer.Stop()
	sub, err := nc.ChanSubscribe(p.inbox, p.msgs)
	if err != nil {
		return nil, fmt.Errorf("jetstream: consume %s: %w", consumer, err)
	}
	p.sub = sub
	return p, nil
}

// apiPrefix is the JetStream API prefix js sends its requests to.
func apiPrefix(js jetstream.JetStream) string {
	o := js.Options()
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	}
	return jetstream.DefaultAPIPrefix
}

// next returns the consumer's next message, pulling as it goes. It
// returns errPullStopped once stop was called.
func (p *puller) next() (*nats.Msg, error) {
	// Idle time counts from here: until now the subscriber had no room,
	// or had a message to hand on.
	idleFrom := time.Now()
	for {
		p.pull()
		m, err := p.receive(idleFrom)
		if err != nil {
			return nil, err
		}
		if m != nil && p.take(m) {
			return m, nil
		}
	}
}

// pull asks for the messages not owed when half of the batch or more
// has arrived.
func (p *puller) pull() {
	if p.owed > p.batch/2 {
		return
	}
	if !p.retryAt.IsZero() {
		if time.Now().Before(p.retryAt) {
			return
		}
		p.retryAt = time.Time{}
	}
	req, _ := json.Marshal(struct {
		Batch     int           `json:"batch"`
		Expires   time.Duration `json:"expires"`
		Heartbeat time.Duration `json:"idle_heartbeat"`
	}{p.batch - p.owed, pullExpiry, pullHeartbeat})
	if err := p.nc.PublishRequest(p.subject, p.inbox, req); err != nil {
		// Disconnected, or the connection closed: try again shortly.
		p.logger.Warn("jetstream: pull request failed; retrying", "consumer", p.consumer, "err", err)
		p.retryAt = time.Now().Add(time.Second)
		return
	}
	p.owed = p.batch
}

// receive waits for the next message on the inbox, or for a reason to
// pull again; nil without an error means pull again.
func (p *puller) receive(idleFrom time.Time) (*nats.Msg, error) {
	select {
	case m := <-p.msgs:
		return m, nil
	case <-p.done:
		p.release()
		return nil, errPullStopped
	default:
	}
	// Nothing is buffered: wait. The silence counts from here, since
	// the server sends nothing while every message it owes is buffered.
	start := time.Now()
	for {
		now := time.Now()
		wake := start.Add(2 * pullHeartbeat)
		if !p.retryAt.IsZero() && p.retryAt.Before(wake) {
			wake = p.retryAt
		}
		if !p.idle && p.pendingNow() > 0 && idleFrom.Add(idleAfter).Before(wake) {
			wake = idleFrom.Add(idleAfter)
		}
		p.timer.Reset(wake.Sub(now))
		select {
		case m := <-p.msgs:
			p.timer.Stop()
			return m, nil
		case <-p.done:
			p.timer.Stop()
			p.release()
			return nil, errPullStopped
		case now = <-p.timer.C:
		}
		if !p.retryAt.IsZero() && !now.Before(p.retryAt) {
			return nil, nil
		}
		if !p.idle && p.pending > 0 && now.Sub(idleFrom) >= idleAfter {
			p.idle = true
			p.metrics.IdlePartitions.Inc()
			p.logger.Warn("jetstream: consumer idle with messages pending on the server", "consumer", p.consumer,
				"pending", p.pending, "owed", p.owed, "idle", now.Sub(idleFrom).Round(time.Millisecond))
		}
		if now.Sub(start) >= 2*pullHeartbeat {
			// Two heartbeats missed: the server no longer holds the
			// requests (it restarted, or the connection was lost).
			p.logger.Info("jetstream: no heartbeat from the server; pulling again", "consumer", p.consumer, "owed", p.owed)
			p.owed = 0
			return nil, nil
		}
	}
}

// pendingNow is the server's count of messages left for the consumer,
// as of the latest message received.
func (p *puller) pendingNow() int64 {
	if p.last != nil {
		if md, err := p.last.Metadata(); err == nil {
			p.pending = int64(md.NumPending)
		}
		p.last = nil
	}
	return p.pending
}

// take accounts for m and reports whether it is a message of the stream
// (rather than a status of the server's).
func (p *puller) take(m *nats.Msg) bool {
	status := ""
	if len(m.Data) == 0 && m.Header != nil {
		status = m.Header.Get(statusHeader)
	}
	if status == "" {
		p.owed = max(p.owed-1, 0)
		p.last = m
		if p.idle {
			p.idle = false
			p.metrics.IdlePartitions.Dec()
			p.logger.Info("jetstream: consumer receives messages again", "consumer", p.consumer)
		}
		return true
	}
	switch status {
	case "100": // idle heartbeat
		return false
	case "404", "408", "409":
		// The server ended a request (404: nothing to deliver, 408: it
		// expired, 409: a limit, or the consumer deleted or moved); it
		// says how many of its messages it did not deliver, which are
		// asked for again at once.
		if left, err := strconv.Atoi(m.Header.Get(pendingMsgsHeader)); err == nil {
			p.owed = max(p.owed-left, 0)
			return false
		}
	}
	// A status that does not say what it ended (503: no consumer,
	// 409 without counts): ask again for everything after a pause.
	p.logger.Warn("jetstream: pull ended by the server; pulling again in a second", "consumer", p.consumer,
		"status", status, "description", m.Header.Get(descriptionHeader))
	p.owed = 0
	p.retryAt = time.Now().Add(time.Second)
	return false
}

// stop ends the subscription; next returns errPullStopped. Call it once.
func (p *puller) stop() {
	_ = p.sub.Unsubscribe()
	close(p.done)
}

// release nacks the messages received and not returned by next, so that
// they are redelivered at once rather than after the ack wait.
func (p *puller) release() {
	for {
		select {
		case m := <-p.msgs:
			if len(m.Data) > 0 || m.Header.Get(statusHeader) == "" {
				_ = p.nak(m)
			}
		default:
			if p.idle {
				p.idle = false
				p.metrics.IdlePartitions.Dec()
			}
			return
		}
	}
}

// Acknowledgements of a message (JetStream's ack protocol).
var (
	ackBody        = []byte("+ACK")
	nakBody        = []byte("-NAK")
	inProgressBody = []byte("+WPI")
)

func (p *puller) nak(m *nats.Msg) error        { return p.nc.Publish(m.Reply, nakBody) }
func (p *puller) inProgress(m *nats.Msg) error { return p.nc.Publish(m.Reply, inProgressBody) }
