package watermill

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"

	"github.com/ThreeDotsLabs/watermill"
	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/bus/redisstream"
)

// NewRedis returns watermill-redisstream's publisher and subscriber on
// client for the streams of c: the same stream names
// (redisstream.Config.Stream), group, entries (redisstream.WireFormat)
// and MAXLEN as bus/redisstream. An upstream subscriber handles one
// entry at a time, so the subscriber runs c.MaxInFlight of them in the
// group, as consumers c.Consumer, c.Consumer-1, … c.Partitions must be
// 0. Neither closes client.
func NewRedis(client redis.UniversalClient, c redisstream.Config, logger *slog.Logger) (message.Publisher, message.Subscriber, error) {
	c.SetDefaults()
	if c.Partitions != 0 {
		return nil, nil, fmt.Errorf("watermill-redisstream: partitions are not supported (got %d)", c.Partitions)
	}
	wl := watermill.NewSlogLogger(logger)
	client = shared{client}
	pub, err := wmredis.NewPublisher(wmredis.PublisherConfig{
		Client: client, Marshaller: redisstream.WireFormat{}, DefaultMaxlen: c.MaxLen,
	}, wl)
	if err != nil {
		return nil, nil, fmt.Errorf("watermill-redisstream: publisher: %w", err)
	}
	n := max(c.MaxInFlight, 1)
	subs := make([]message.Subscriber, n)
	for i := range subs {
		consumer := c.Consumer
		if i > 0 {
			consumer += "-" + strconv.Itoa(i)
		}
		subs[i], err = wmredis.NewSubscriber(wmredis.SubscriberConfig{
			Client:        client,
			Unmarshaller:  redisstream.WireFormat{},
			Consumer:      consumer,
			ConsumerGroup: c.Group,
			// A nacked entry is handed out again by the same subscriber,
			// before any other: the stream's order holds, and the
			// subscriber waits this long first.
			NackResendSleep: NackDelay,
			BlockTime:       c.Block,
			ClaimInterval:   c.ClaimInterval,
			MaxIdleTime:     c.ClaimIdle,
			// A read that blocks forever outlives Close (go-redis
			// cannot cancel it); BlockTime bounds every read.
			DisableIndefiniteInitialBlock: true,
		}, wl)
		if err != nil {
			return nil, nil, fmt.Errorf("watermill-redisstream: subscriber: %w", err)
		}
	}
	return prefixed{pub: pub, c: c}, &fanIn{subs: subs, c: c}, nil
}

// shared is the client without its Close: the upstream publisher and
// subscribers each close their client, and this one is the topology's,
// shared with its stores.
type shared struct{ redis.UniversalClient }

func (shared) Close() error { return nil }

// prefixed publishes topic onto its stream, c.Stream(topic).
type prefixed struct {
	pub message.Publisher
	c   redisstream.Config
}

func (p prefixed) Publish(topic string, msgs ...*message.Message) error {
	return p.pub.Publish(p.c.Stream(topic), msgs...)
}

// Close leaves the publisher open: the router closes the publisher of
// each capture handler as it stops, and they share this one with
// ingest; all the upstream Close does besides is close the shared
// client, which the topology does.
func (p prefixed) Close() error { return nil }

// fanIn subscribes every upstream subscriber to the topic's stream and
// merges what they hand out. Each message is passed on as it is, so
// the upstream subscriber that read it sees its ack or nack.
type fanIn struct {
	subs []message.Subscriber
	c    redisstream.Config
}

func (f *fanIn) String() string { return "watermill-redisstream.Subscriber" }

func (f *fanIn) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	out := make(chan *message.Message)
	var wg sync.WaitGroup
	for _, s := range f.subs {
		ch, err := s.Subscribe(ctx, f.c.Stream(topic))
		if err != nil {
			return nil, fmt.Errorf("watermill-redisstream: subscribe %s: %w", topic, err)
		}
		wg.Go(func() {
			for m := range ch {
				select {
				case out <- m:
				case <-ctx.Done():
					// Unsettled: upstream leaves it pending, and it is
					// read again after a restart or claimed.
					return
				}
			}
		})
	}
	go func() { wg.Wait(); close(out) }()
	return out, nil
}

func (f *fanIn) Close() error {
	var errs []error
	for _, s := range f.subs {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}
