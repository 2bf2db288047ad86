package topologies

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	njs "github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/bus/redisstream"
)

// Lag is how far one consumer of the bus is behind the bus's head, for
// the console's bus health page.
type Lag struct {
	// Consumer names it: a JetStream durable consumer (one per
	// partition when nats.partitions is set), or a Redis stream and its
	// consumer group.
	Consumer string
	// Pending counts the messages not delivered to it yet; AckPending
	// those delivered and not acked yet.
	Pending, AckPending int64
	// Position is the last bus position delivered to it, Head the
	// bus's last (JetStream stream sequences; Redis entry ids as text
	// in PositionID and HeadID).
	Position, Head     uint64
	PositionID, HeadID string
}

// JetStreamLag reports every durable consumer of stream: each partition
// has its own, so listing the stream's consumers covers them all
// without knowing how they are named.
func JetStreamLag(js njs.JetStream, stream string) func(context.Context) ([]Lag, error) {
	return func(ctx context.Context) ([]Lag, error) {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", stream, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", stream, err)
		}
		var out []Lag
		list := s.ListConsumers(ctx)
		for ci := range list.Info() {
			out = append(out, Lag{Consumer: ci.Name, Pending: int64(ci.NumPending), AckPending: int64(ci.NumAckPending),
				Position: ci.Delivered.Stream, Head: info.State.LastSeq})
		}
		if err := list.Err(); err != nil && !errors.Is(err, njs.ErrEndOfData) {
			return out, fmt.Errorf("stream %s: consumers: %w", stream, err)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Consumer < out[j].Consumer })
		return out, nil
	}
}

// RedisLag reports the consumer groups of the streams that carry topic
// (one per partition when redis.partitions is set), from XINFO GROUPS:
// its lag (Redis 7+; -1 when Redis cannot tell) and pending entries.
func RedisLag(rc redis.UniversalClient, c redisstream.Config, topic string) func(context.Context) ([]Lag, error) {
	streams := c.Streams(topic)
	return func(ctx context.Context) ([]Lag, error) {
		var out []Lag
		for _, st := range streams {
			groups, err := rc.XInfoGroups(ctx, st).Result()
			if err != nil {
				if strings.Contains(err.Error(), "no such key") {
					continue // nothing published there yet
				}
				return out, fmt.Errorf("XINFO GROUPS %s: %w", st, err)
			}
			head := ""
			if info, err := rc.XInfoStream(ctx, st).Result(); err == nil {
				head = info.LastGeneratedID
			}
			for _, g := range groups {
				out = append(out, Lag{Consumer: st + " / " + g.Name, Pending: g.Lag, AckPending: g.Pending,
					PositionID: g.LastDeliveredID, HeadID: head})
			}
		}
		return out, nil
	}
}
