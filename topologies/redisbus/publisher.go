package redisbus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
)

// publishChunk bounds the XADDs of one pipeline.
const publishChunk = 1000

// publishTimeout bounds one Publish call.
const publishTimeout = 30 * time.Second

// Publisher appends messages to a topic's stream. It is safe for
// concurrent use and does not own the client.
type Publisher struct {
	client redis.UniversalClient
	cfg    Config
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher returns a publisher on client.
func NewPublisher(client redis.UniversalClient, cfg Config) *Publisher {
	cfg.SetDefaults()
	return &Publisher{client: client, cfg: cfg}
}

// Publish appends msgs to topic's stream with pipelined XADDs (one round
// trip per 1,000 messages) and returns once Redis stored every one; the
// error lists those that failed.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	stream := p.cfg.Stream(topic)
	var errs []error
	for start := 0; start < len(msgs); start += publishChunk {
		chunk := msgs[start:min(start+publishChunk, len(msgs))]
		pipe := p.client.Pipeline()
		cmds := make([]*redis.StringCmd, len(chunk))
		for i, m := range chunk {
			cmds[i] = pipe.XAdd(ctx, &redis.XAddArgs{
				Stream: stream,
				MaxLen: p.cfg.MaxLen,
				Approx: p.cfg.MaxLen > 0,
				Values: entryValues(m),
			})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			for i, c := range cmds {
				if c.Err() != nil {
					errs = append(errs, fmt.Errorf("redisbus: publish %s to %s: %w", chunk[i].UUID, stream, c.Err()))
				}
			}
			if len(errs) == 0 {
				errs = append(errs, fmt.Errorf("redisbus: publish to %s: %w", stream, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Close does nothing: the client belongs to the caller.
func (p *Publisher) Close() error { return nil }
