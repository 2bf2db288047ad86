package redisstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
)

const (
	// publishChunk bounds the XADDs of one pipeline.
	publishChunk = 1000
	// maxFlushes bounds the pipelines on the wire at once.
	maxFlushes = 4
	// publishTimeout bounds one pipeline.
	publishTimeout = 30 * time.Second
)

// Publisher appends messages to a topic's stream. It is safe for
// concurrent use and does not own the client.
//
// Concurrent Publish calls share pipelines: a call that finds fewer than
// four pipelines in flight sends one with every message queued so far,
// its own included, and the others wait for theirs. The router publishes
// one message per call (one per captured change, many at once), so this
// turns a round trip per change into a round trip per batch. A call's
// messages keep their order, and a call returns once Redis stored them.
//
// With Config.Partitions each message goes to the stream of its
// partition (Config.PartitionStream), by its ordering key.
type Publisher struct {
	client redis.UniversalClient
	cfg    Config

	mu      sync.Mutex
	pending []*publication
	active  int // calls sending pipelines
}

// publication is the messages of one Publish call.
type publication struct {
	topic string
	msgs  []*message.Message
	errs  []error
	done  chan struct{}
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher returns a publisher on client.
func NewPublisher(client redis.UniversalClient, cfg Config) *Publisher {
	cfg.SetDefaults()
	return &Publisher{client: client, cfg: cfg}
}

// Publish appends msgs to topic's stream, or to their partitions'
// streams (XADD, MAXLEN ~ per stream when MaxLen is set), and returns
// once Redis stored every one; the error lists those that failed.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	own := &publication{topic: topic, msgs: msgs, done: make(chan struct{})}
	p.mu.Lock()
	p.pending = append(p.pending, own)
	if p.active >= maxFlushes {
		p.mu.Unlock()
		<-own.done
		return errors.Join(own.errs...)
	}
	p.active++
	p.mu.Unlock()
	for {
		p.mu.Lock()
		if isDone(own) && (len(p.pending) == 0 || p.active > 1) {
			// Nothing is left, or another call goes on sending it.
			p.active--
			p.mu.Unlock()
			return errors.Join(own.errs...)
		}
		batch := p.take()
		p.mu.Unlock()
		if len(batch) > 0 {
			p.send(batch)
		} else {
			// Our messages are on the wire in another call's pipeline.
			<-own.done
		}
	}
}

func isDone(pub *publication) bool {
	select {
	case <-pub.done:
		return true
	default:
		return false
	}
}

// take removes queued publications, whole, up to about publishChunk
// messages. Call it with p.mu held.
func (p *Publisher) take() []*publication {
	n, i := 0, 0
	for i < len(p.pending) && (i == 0 || n+len(p.pending[i].msgs) <= publishChunk) {
		n += len(p.pending[i].msgs)
		i++
	}
	batch := append([]*publication(nil), p.pending[:i]...)
	p.pending = p.pending[i:]
	return batch
}

// send appends the batch's messages with pipelined XADDs and settles each
// publication.
func (p *Publisher) send(batch []*publication) {
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	type cmdOf struct {
		pub    *publication
		msg    *message.Message
		stream string
		cmd    *redis.StringCmd
	}
	var cmds []cmdOf
	flush := func() {
		if len(cmds) == 0 {
			return
		}
		pipe := p.client.Pipeline()
		for i := range cmds {
			c := &cmds[i]
			c.cmd = pipe.XAdd(ctx, &redis.XAddArgs{
				Stream: c.stream,
				MaxLen: p.cfg.MaxLen,
				Approx: p.cfg.MaxLen > 0,
				Values: entryValues(c.msg),
			})
		}
		// WAIT in the same pipeline, so on the same connection: it
		// counts the replicas that hold this connection's writes.
		var wait *redis.Cmd
		if p.cfg.WaitReplicas > 0 {
			wait = pipe.Do(ctx, "wait", p.cfg.WaitReplicas, p.cfg.WaitTimeout.Milliseconds())
		}
		_, _ = pipe.Exec(ctx) // each command carries its own error
		var waitErr error
		if wait != nil {
			if n, err := wait.Int64(); err != nil {
				waitErr = fmt.Errorf("WAIT: %w", err)
			} else if n < int64(p.cfg.WaitReplicas) {
				waitErr = fmt.Errorf("%d of the %d replicas asked for (redis.wait_replicas) acknowledged it within %s",
					n, p.cfg.WaitReplicas, p.cfg.WaitTimeout)
			}
		}
		for _, c := range cmds {
			err := c.cmd.Err()
			if err == nil {
				err = waitErr
			}
			if err != nil {
				c.pub.errs = append(c.pub.errs, fmt.Errorf("redisstream: publish %s to %s: %w", c.msg.UUID, c.stream, err))
			}
		}
		cmds = cmds[:0]
	}
	for _, pub := range batch {
		for _, m := range pub.msgs {
			cmds = append(cmds, cmdOf{pub: pub, msg: m, stream: p.cfg.streamOf(pub.topic, m)})
			if len(cmds) == publishChunk {
				flush()
			}
		}
	}
	flush()
	for _, pub := range batch {
		close(pub.done)
	}
}

// Close does nothing: the client belongs to the caller.
func (p *Publisher) Close() error { return nil }
