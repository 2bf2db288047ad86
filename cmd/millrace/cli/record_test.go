package cli

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	njs "github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/bus"
	"github.com/millrace/millrace/bus/capture"
	"github.com/millrace/millrace/bus/jetstream"
	"github.com/millrace/millrace/bus/redisstream"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/internal/testenv"
)

// orderMessages are the bus messages of orderEvents(n).
func orderMessages(t *testing.T, n int) []*message.Message {
	t.Helper()
	var msgs []*message.Message
	for _, ev := range orderEvents(n) {
		p, err := event.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		m := message.NewMessage(ev.ID, p)
		bus.SetRouting(m, ev)
		msgs = append(msgs, m)
	}
	return msgs
}

// recordBus is one bus of the record tests: a config of its topology,
// with 1000 orderEvents on the bus; consume, when set, reads the bus as
// a consumer group does and returns the ids it got, each acked.
type recordBus struct {
	config string
	// unordered: the bus keeps order per entity only (partitions), so
	// the file holds the events in another order.
	unordered bool
	consume   func(ctx context.Context, t *testing.T, n int) (ids []string, redelivered int)
}

func jetStreamBus(t *testing.T) recordBus {
	_, js, prefix := testenv.NATS(t)
	stream := strings.ToUpper(prefix) + "_EVENTS"
	path := writeConfig(t, fmt.Sprintf(`
topology = "nats"
[nats]
url = %q
stream = %q
subject_prefix = %q
[redis]
url = %q
key_prefix = "%s:"
`, testenv.NATSURL(), stream, prefix, testenv.RedisURL(), prefix))
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	jc := jetstream.Config{Stream: stream, SubjectPrefix: prefix, MaxAge: time.Hour, Replicas: 1, DuplicateWindow: time.Minute, Memory: true}
	ctx := context.Background()
	if _, err := jetstream.EnsureStream(ctx, js, jc); err != nil {
		t.Fatal(err)
	}
	if err := jetstream.NewPublisher(js, jc).Publish(cfg.Router.Topic, orderMessages(t, 1000)...); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateConsumer(ctx, stream, njs.ConsumerConfig{Durable: "workers", AckPolicy: njs.AckExplicitPolicy,
		FilterSubject: jc.Subject(cfg.Router.Topic, ">")})
	if err != nil {
		t.Fatal(err)
	}
	return recordBus{config: path, consume: func(ctx context.Context, t *testing.T, n int) ([]string, int) {
		var ids []string
		redelivered := 0
		for len(ids) < n && ctx.Err() == nil {
			batch, err := cons.Fetch(50, njs.FetchMaxWait(time.Second))
			if err != nil {
				t.Error(err)
				return ids, redelivered
			}
			for m := range batch.Messages() {
				md, _ := m.Metadata()
				if md.NumDelivered > 1 {
					redelivered++
				}
				ev, err := event.Decode(m.Data())
				if err != nil {
					t.Error(err)
				} else {
					ids = append(ids, ev.ID)
				}
				_ = m.Ack()
			}
		}
		return ids, redelivered
	}}
}

func redisBus(t *testing.T) recordBus { return redisBusOf(t, 0) }

// redisPartitionsBus spreads the events over 4 partition streams.
func redisPartitionsBus(t *testing.T) recordBus {
	b := redisBusOf(t, 4)
	b.unordered, b.consume = true, nil
	return b
}

func redisBusOf(t *testing.T, partitions int) recordBus {
	rc, prefix := testenv.Redis(t)
	path := writeConfig(t, fmt.Sprintf(`
topology = "redis"
[redis]
url = %q
key_prefix = %q
partitions = %d
`, testenv.RedisURL(), prefix, partitions))
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	bc := redisstream.Config{Prefix: prefix, Partitions: partitions}
	stream := bc.Stream(cfg.Router.Topic)
	ctx := context.Background()
	if err := rc.XGroupCreateMkStream(ctx, stream, "workers", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := redisstream.NewPublisher(rc, bc).Publish(cfg.Router.Topic, orderMessages(t, 1000)...); err != nil {
		t.Fatal(err)
	}
	return recordBus{config: path, consume: func(ctx context.Context, t *testing.T, n int) ([]string, int) {
		var ids []string
		for len(ids) < n && ctx.Err() == nil {
			res, err := rc.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "workers", Consumer: "w", Streams: []string{stream, ">"},
				Count: 50, Block: time.Second}).Result()
			if err != nil && err != redis.Nil {
				t.Error(err)
				return ids, 0
			}
			for _, s := range res {
				for _, m := range s.Messages {
					ev, err := event.Decode([]byte(m.Values["payload"].(string)))
					if err != nil {
						t.Error(err)
					} else {
						ids = append(ids, ev.ID)
					}
					rc.XAck(ctx, stream, "workers", m.ID)
				}
			}
		}
		// XREADGROUP ">" hands each entry out once; an entry handed out
		// again would show in the group's pending list.
		pending, err := rc.XPending(ctx, stream, "workers").Result()
		if err != nil {
			t.Error(err)
			return ids, 0
		}
		return ids, int(pending.Count)
	}}
}

func changeLogBus(t *testing.T) recordBus {
	pool, schema := testenv.Postgres(t)
	logSchema := schema + "_log"
	ctx := context.Background()
	if err := capture.Migrate(ctx, pool, logSchema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), "DROP SCHEMA "+logSchema+" CASCADE") })
	if err := capture.NewPublisher(pool, logSchema).Publish("events", orderMessages(t, 1000)...); err != nil {
		t.Fatal(err)
	}
	path := writeConfig(t, fmt.Sprintf(`
topology = "postgres"
[postgres]
url = %q
schema = %q
`, testenv.PostgresURL(), logSchema))
	return recordBus{config: path}
}

// TestRecordThenTry: 1000 events on each bus are recorded to a file, in
// order, and try on that file shows exactly the effects TestTryDiff
// expects, without sending anything. A consumer reading the bus while
// record runs gets every event once.
func TestRecordThenTry(t *testing.T) {
	t.Setenv("TRY_TEST_SECRET", "whsec_"+"c2VjcmV0LWtleS0xMjM0NTY3OA==")
	for name, newBus := range map[string]func(*testing.T) recordBus{
		"jetstream": jetStreamBus, "redis": redisBus, "redis partitions": redisPartitionsBus, "postgres": changeLogBus,
	} {
		t.Run(name, func(t *testing.T) {
			b := newBus(t)
			out := filepath.Join(t.TempDir(), "events.jsonl")

			var wg sync.WaitGroup
			var ids []string
			var redelivered int
			if b.consume != nil {
				// Half the events are consumed before record runs, the
				// other half while it runs.
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				ids, redelivered = b.consume(ctx, t, 500)
				wg.Add(1)
				go func() {
					defer wg.Done()
					more, again := b.consume(ctx, t, 1000-len(ids))
					ids, redelivered = append(ids, more...), redelivered+again
				}()
			}
			code, _, stderr := runCLI(t, "record", "-c", b.config, "--out", out)
			if code != ExitOK {
				t.Fatalf("record: exit %d: %s", code, stderr)
			}
			wg.Wait()
			want := orderEvents(1000)
			got := readIDs(t, out)
			if len(got) != len(want) {
				t.Fatalf("recorded %d events, want %d", len(got), len(want))
			}
			if b.unordered {
				seen := map[string]bool{}
				for _, id := range got {
					seen[id] = true
				}
				for _, ev := range want {
					if !seen[ev.ID] {
						t.Fatalf("event %s not recorded", ev.ID)
					}
				}
			} else {
				for i, ev := range want {
					if got[i] != ev.ID {
						t.Fatalf("line %d: event %s, want %s", i+1, got[i], ev.ID)
					}
				}
			}
			if b.consume != nil {
				seen := map[string]bool{}
				for _, id := range ids {
					seen[id] = true
				}
				if len(ids) != 1000 || len(seen) != 1000 || redelivered != 0 {
					t.Errorf("the consumer got %d events, %d distinct, %d redelivered; want 1000 once each", len(ids), len(seen), redelivered)
				}
			}

			// --limit and --from-seq/--since pick a part.
			if code, _, stderr := runCLI(t, "record", "-c", b.config, "--out", out, "--limit", "10"); code != ExitOK {
				t.Fatalf("record --limit: exit %d: %s", code, stderr)
			}
			if got := readIDs(t, out); len(got) != 10 || (!b.unordered && got[9] != want[9].ID) {
				t.Errorf("record --limit 10: %d events, last %v", len(got), got[len(got)-1:])
			}

			if name != "postgres" { // the change log keeps the events' own (past) timestamps
				if code, _, stderr := runCLI(t, "record", "-c", b.config, "--out", out, "--since", "1h"); code != ExitOK {
					t.Fatalf("record --since: exit %d: %s", code, stderr)
				} else if got := readIDs(t, out); len(got) != 1000 {
					t.Errorf("record --since 1h: %d events, want 1000", len(got))
				}
			}
			if !strings.HasPrefix(name, "redis") { // positions 1..1000 in a new stream or change log
				if code, _, stderr := runCLI(t, "record", "-c", b.config, "--out", out, "--from-seq", "990"); code != ExitOK {
					t.Fatalf("record --from-seq: exit %d: %s", code, stderr)
				} else if got := readIDs(t, out); len(got) != 10 || got[0] != want[990].ID {
					t.Errorf("record --from-seq 990: %d events, first %v; want 10 from %s", len(got), got[:min(len(got), 1)], want[990].ID)
				}
			}

			// The full file through try.
			if code, _, stderr := runCLI(t, "record", "-c", b.config, "--out", out); code != ExitOK {
				t.Fatalf("record: exit %d: %s", code, stderr)
			}
			assertTryDiff(t, out)
		})
	}
}

func readIDs(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ids []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		ev, err := event.Decode(sc.Bytes())
		if err != nil {
			t.Fatalf("line %d: %v", len(ids)+1, err)
		}
		ids = append(ids, ev.ID)
	}
	return ids
}
