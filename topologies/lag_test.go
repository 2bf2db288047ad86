package topologies_test

import (
	"context"
	"strings"
	"testing"
	"time"

	njs "github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/bus/redisstream"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/topologies"
)

// JetStreamLag lists every durable consumer of the stream with what it
// has not been delivered yet and what it holds unacked.
func TestJetStreamLag(t *testing.T) {
	_, js, prefix := testenv.NATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream := strings.ToUpper(prefix) + "_EVENTS"
	s, err := js.CreateStream(ctx, njs.StreamConfig{Name: stream, Subjects: []string{prefix + ".>"}})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := js.Publish(ctx, prefix+".e", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"p0", "p1"} {
		if _, err := s.CreateConsumer(ctx, njs.ConsumerConfig{Durable: name, AckPolicy: njs.AckExplicitPolicy}); err != nil {
			t.Fatal(err)
		}
	}
	c, _ := s.Consumer(ctx, "p0")
	batch, err := c.Fetch(2, njs.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range batch.Messages() {
		if n == 0 {
			_ = m.Ack()
		}
		n++
	}
	if n != 2 {
		t.Fatalf("fetched %d; want 2", n)
	}
	lags, err := topologies.JetStreamLag(js, stream)(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(lags) != 2 {
		t.Fatalf("lags %+v; want p0 and p1", lags)
	}
	want := []topologies.Lag{
		{Consumer: "p0", Pending: 3, AckPending: 1, Position: 2, Head: 5},
		{Consumer: "p1", Pending: 5, AckPending: 0, Position: 0, Head: 5},
	}
	for i, w := range want {
		if lags[i] != w {
			t.Errorf("lag %d = %+v; want %+v", i, lags[i], w)
		}
	}
}

// RedisLag reads XINFO GROUPS of each stream of the topic, partitions
// included, and skips streams that do not exist yet.
func TestRedisLag(t *testing.T) {
	rc, prefix := testenv.Redis(t)
	ctx := context.Background()
	c := redisstream.Config{Prefix: prefix, Partitions: 2}
	streams := c.Streams("events")
	if len(streams) != 3 {
		t.Fatalf("streams %v; want the topic's and 2 partitions'", streams)
	}
	st := streams[1]
	for range 4 {
		if err := rc.XAdd(ctx, &redis.XAddArgs{Stream: st, Values: []any{"k", "v"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := rc.XGroupCreate(ctx, st, "workers", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rc.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "w1", Streams: []string{st, ">"}, Count: 1}).Err(); err != nil {
		t.Fatal(err)
	}
	lags, err := topologies.RedisLag(rc, c, "events")(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(lags) != 1 {
		t.Fatalf("lags %+v; want the one group", lags)
	}
	l := lags[0]
	if l.Consumer != st+" / workers" || l.Pending != 3 || l.AckPending != 1 || l.HeadID == "" || l.PositionID == "" {
		t.Errorf("lag %+v; want 3 not delivered and 1 unacked on %s", l, st)
	}
}
