package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/internal/routertest"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/router"
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

// embeddedBus runs millrace on the embedded topology with the admin API
// on and posts 1000 orderEvents to it; the config it returns names the
// running process's address, as a deployment's file would.
func embeddedBus(t *testing.T) recordBus {
	const token = "record-token"
	cfgText := adminConfig(t, token)
	addr, _ := startMillrace(t, cfgText)
	postEvents(t, addr, orderEvents(1000))
	return recordBus{config: writeConfig(t, strings.Replace(cfgText, `"127.0.0.1:0"`, strconv.Quote(addr), 1))}
}

// postEvents posts evs to a running millrace in batches of 100.
func postEvents(t *testing.T, addr string, evs []*event.Event) {
	t.Helper()
	for batch := range slices.Chunk(evs, 100) {
		body, err := json.Marshal(batch)
		if err != nil {
			t.Error(err)
			return
		}
		resp, err := http.Post("http://"+addr+"/v1/events", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Error(err)
			return
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Errorf("POST /v1/events: %s %s", resp.Status, b)
			return
		}
	}
}

// TestRecordThenTry: 1000 events on each bus are recorded to a file, in
// order, and try on that file shows exactly the effects TestTryDiff
// expects, without sending anything. A consumer reading the bus while
// record runs gets every event once.
func TestRecordThenTry(t *testing.T) {
	t.Setenv("TRY_TEST_SECRET", "whsec_"+"c2VjcmV0LWtleS0xMjM0NTY3OA==")
	for name, newBus := range map[string]func(*testing.T) recordBus{
		"jetstream": jetStreamBus, "redis": redisBus, "redis partitions": redisPartitionsBus, "postgres": changeLogBus,
		"embedded": embeddedBus,
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

// TestRecordEmbeddedNeedsToken: on the embedded topology record asks the
// running process's admin API, so a config without
// http.admin_token_env is a usage error naming that key, and a wrong
// token is refused by the process.
func TestRecordEmbeddedNeedsToken(t *testing.T) {
	b := embeddedBus(t)
	raw, err := os.ReadFile(b.config)
	if err != nil {
		t.Fatal(err)
	}
	noToken := writeConfig(t, strings.Replace(string(raw), "admin_token_env", "# admin_token_env", 1))
	out := filepath.Join(t.TempDir(), "events.jsonl")
	if code, _, stderr := runCLI(t, "record", "-c", noToken, "--out", out); code != ExitInvalid || !strings.Contains(stderr, "http.admin_token_env") {
		t.Errorf("record without http.admin_token_env: exit %d %s; want %d naming the key", code, stderr, ExitInvalid)
	}
	t.Setenv(DefaultAdminTokenEnv, "wrong")
	if code, _, stderr := runCLI(t, "record", "-c", b.config, "--out", out); code != ExitFailure || !strings.Contains(stderr, "401") {
		t.Errorf("record with a wrong token: exit %d %s; want %d and 401", code, stderr, ExitFailure)
	}
}

// natsSection is the start of a config on the nats topology, over a
// stream, subjects, a consumer and Redis keys of the test's own.
func natsSection(t *testing.T) string {
	_, _, prefix := testenv.NATS(t)
	_, redisPrefix := testenv.Redis(t)
	return fmt.Sprintf(`topology = "nats"
[nats]
url = %q
stream = %q
subject_prefix = %q
consumer = %q
[redis]
url = %q
key_prefix = "%s:"
`, testenv.NATSURL(), strings.ToUpper(prefix)+"_EVENTS", prefix, prefix, testenv.RedisURL(), redisPrefix)
}

// redisSection is the start of a config on the redis topology, over
// keys of the test's own.
func redisSection(t *testing.T) string {
	_, prefix := testenv.Redis(t)
	return fmt.Sprintf("topology = \"redis\"\n[redis]\nurl = %q\nkey_prefix = \"%s:\"\n", testenv.RedisURL(), prefix)
}

// seenAction counts the runs of each event; it is the receiver of the
// router consumer in TestRecordDuringTraffic.
type seenAction struct {
	mu   sync.Mutex
	runs map[string]int
}

type seenConfig struct{}

func (seenConfig) Validate() error { return nil }

func (a *seenAction) Execute(_ context.Context, ev *event.Event) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.runs[ev.ID]++
	return nil
}

func (a *seenAction) distinct() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.runs)
}

// TestRecordDuringTraffic: on each bus, a millrace router consumes the
// events posted to it while `millrace record` reads the bus again and
// again; the router's action runs every event exactly once (dedup is
// off, so a redelivery would show), each recording holds distinct
// posted events, and a recording after the traffic holds them all.
// record --follow then holds those and the events posted while it taps.
func TestRecordDuringTraffic(t *testing.T) {
	const token = "traffic-token"
	for name, section := range map[string]func(t *testing.T) string{
		"nats":  natsSection,
		"redis": redisSection,
		"postgres": func(t *testing.T) string {
			_, schema := testenv.Postgres(t)
			return fmt.Sprintf("topology = \"postgres\"\n[postgres]\nurl = %q\nschema = %q\n", testenv.PostgresSchemaURL(t, schema), schema)
		},
		"embedded": func(t *testing.T) string {
			return fmt.Sprintf("topology = \"embedded\"\n[embedded]\ndata_dir = %q\n", t.TempDir())
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(DefaultAdminTokenEnv, token)
			cfgText := section(t) + fmt.Sprintf(`
[http]
addr = %%s
admin_token_env = %q
[router]
shutdown_timeout = "5s"
[dedup]
enabled = false
[observers.seen]
entity = "Order"
actions = [{ type = "seen" }]
`, DefaultAdminTokenEnv)
			seen := &seenAction{runs: map[string]int{}}
			o := Defaults()
			handlers.MustRegister(o.Actions, "seen", func(context.Context, seenConfig, handlers.Deps) (handlers.Action, error) {
				return seen, nil
			})
			cfg, err := config.Parse(fmt.Appendf(nil, cfgText, `"127.0.0.1:0"`), nil)
			if err != nil {
				t.Fatal(err)
			}
			addr, _ := routertest.Start(t, cfg, router.Options{Actions: o.Actions, Topologies: o.Topologies})
			path := writeConfig(t, fmt.Sprintf(cfgText, strconv.Quote(addr)))

			evs := orderEvents(1000)
			posted := map[string]bool{}
			for _, ev := range evs {
				posted[ev.ID] = true
			}
			traffic := make(chan struct{})
			go func() {
				defer close(traffic)
				for batch := range slices.Chunk(evs, 50) {
					postEvents(t, addr, batch)
					time.Sleep(20 * time.Millisecond)
				}
			}()
			out := filepath.Join(t.TempDir(), "events.jsonl")
			records := 0
			for running := true; running; {
				select {
				case <-traffic:
					running = false
				default:
				}
				code, _, stderr := runCLIWith(t, o, "record", "-c", path, "--out", out)
				if code != ExitOK {
					t.Fatalf("record during traffic: exit %d: %s", code, stderr)
				}
				got := readIDs(t, out)
				distinct := map[string]bool{}
				for _, id := range got {
					if !posted[id] || distinct[id] {
						t.Fatalf("a recording during traffic holds %s, not posted or twice", id)
					}
					distinct[id] = true
				}
				if running {
					records++
				}
			}
			if records < 2 {
				t.Errorf("record ran %d times during the traffic; want at least 2 for the test to mean something", records)
			}

			ranOnce := func(evs []*event.Event) {
				t.Helper()
				waitFor(t, "the consumer to run every event", func() bool { return seen.distinct() == len(evs) })
				time.Sleep(time.Second) // room for a redelivery to show
				seen.mu.Lock()
				defer seen.mu.Unlock()
				for _, ev := range evs {
					if n := seen.runs[ev.ID]; n != 1 {
						t.Errorf("event %s ran %d times; want once", ev.ID, n)
					}
				}
				if len(seen.runs) != len(evs) {
					t.Errorf("the consumer ran %d distinct events; want the %d posted", len(seen.runs), len(evs))
				}
			}
			ranOnce(evs)

			code, _, stderr := runCLIWith(t, o, "record", "-c", path, "--out", out)
			if code != ExitOK {
				t.Fatalf("record after the traffic: exit %d: %s", code, stderr)
			}
			got := readIDs(t, out)
			if len(got) != len(evs) {
				t.Fatalf("the recording after the traffic holds %d events; want %d", len(got), len(evs))
			}
			for i, ev := range evs { // one bus, one partition: in order
				if got[i] != ev.ID {
					t.Fatalf("line %d: event %s, want %s", i+1, got[i], ev.ID)
				}
			}
			t.Logf("%s: %d recordings during the traffic", name, records)

			// --follow: what the bus holds, then what arrives for a while.
			// The post takes milliseconds; the rest of the window is for
			// the tap to read what arrived before it ends.
			const follow = 3 * time.Second
			later := orderEvents(1100)[1000:]
			tapped := make(chan []string)
			start := time.Now()
			go func() {
				tap := filepath.Join(t.TempDir(), "tap.jsonl")
				code, _, stderr := runCLIWith(t, o, "record", "-c", path, "--out", tap, "--follow", follow.String())
				if code != ExitOK {
					t.Errorf("record --follow: exit %d: %s", code, stderr)
				}
				tapped <- readIDs(t, tap)
			}()
			time.Sleep(time.Second)
			postEvents(t, addr, later)
			postedAfter := time.Since(start)
			got = <-tapped
			all := append(evs, later...)
			if len(got) != len(all) {
				t.Fatalf("record --follow %s: %d events; want the %d held and the %d posted meanwhile (posted %s after the tap started)",
					follow, len(got), len(evs), len(later), postedAfter.Round(time.Millisecond))
			}
			for i, ev := range all {
				if got[i] != ev.ID {
					t.Fatalf("record --follow, line %d: event %s, want %s", i+1, got[i], ev.ID)
				}
			}
			ranOnce(all)
		})
	}
}

// TestRecordCapturedThenTry: 1000 changes captured from a watched table
// (trigger → change log, and on nats and redis the capture of a running
// millrace → the bus) are recorded from each bus, and try on the
// recording shows exactly the effects TestTryDiff expects, sending
// nothing.
func TestRecordCapturedThenTry(t *testing.T) {
	t.Setenv("TRY_TEST_SECRET", "whsec_"+"c2VjcmV0LWtleS0xMjM0NTY3OA==")
	for name, section := range map[string]func(t *testing.T) string{
		// A process that only captures bridges the change log to the bus.
		"nats":  func(t *testing.T) string { return "role = \"capture\"\n" + natsSection(t) },
		"redis": func(t *testing.T) string { return "role = \"capture\"\n" + redisSection(t) },
		// The change log is the bus: no process is needed between them.
		"postgres": func(*testing.T) string { return "topology = \"postgres\"\n" },
		// The embedded topology has no capture of [[sources]] (it takes
		// HTTP ingest only); TestRecordThenTry records it.
	} {
		t.Run(name, func(t *testing.T) {
			pool, schema := testenv.Postgres(t)
			ctx := context.Background()
			if _, err := pool.Exec(ctx, `CREATE TABLE orders (id int PRIMARY KEY, status text, total bigint);
				INSERT INTO orders SELECT x, 'new', 0 FROM generate_series(0, 999) x`); err != nil {
				t.Fatal(err)
			}
			t.Setenv("MILLRACE_TEST_CAPTURED_DB", testenv.PostgresSchemaURL(t, schema))
			cfgText := section(t) + fmt.Sprintf(`
[[sources]]
name = "shop"
postgres_url_env = "MILLRACE_TEST_CAPTURED_DB"
schema = %q
tables = ["%s.orders"]
entities = { "%s.orders" = "Order" }
[http]
addr = "127.0.0.1:0"
[router]
shutdown_timeout = "5s"
`, schema, schema, schema)
			path := writeConfig(t, cfgText)
			if code, out, stderr := runCLI(t, "watch", "-c", path, schema+".orders"); code != ExitOK {
				t.Fatalf("watch: exit %d: %s%s", code, out, stderr)
			}
			stop := func() {}
			if name != "postgres" {
				cfg, err := config.Load(path)
				if err != nil {
					t.Fatal(err)
				}
				o := Defaults()
				_, stop = routertest.Start(t, cfg, router.Options{Actions: o.Actions, Topologies: o.Topologies})
			}
			if _, err := pool.Exec(ctx, `UPDATE orders SET total = id,
				status = CASE WHEN id % 2 = 0 THEN 'shipped' ELSE 'pending' END`); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "events.jsonl")
			waitFor(t, "1000 changes on the bus", func() bool {
				code, _, stderr := runCLI(t, "record", "-c", path, "--out", out)
				if code != ExitOK {
					t.Fatalf("record: exit %d: %s", code, stderr)
				}
				return len(readIDs(t, out)) >= 1000
			})
			stop()
			if got := readIDs(t, out); len(got) != 1000 {
				t.Fatalf("recorded %d changes; want 1000", len(got))
			}
			assertTryDiff(t, out)
		})
	}
}
