package router_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/internal/routertest"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/router"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/embedded"
	"github.com/millrace/millrace/topologies/nats"
	"github.com/millrace/millrace/topologies/redis"
)

// hookReceiver is a webhook endpoint that passes on the traceparent
// header of each request.
func hookReceiver(t *testing.T) (*httptest.Server, <-chan string) {
	t.Helper()
	got := make(chan string, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		got <- req.Header.Get("traceparent")
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return srv, got
}

// tracedRouter runs a router on cfgText with tracing on and its spans
// recorded in process.
func tracedRouter(t *testing.T, cfgText string) (string, *tracetest.SpanRecorder) {
	t.Helper()
	cfg, err := config.Parse([]byte(cfgText), nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	topo := topologies.NewRegistry()
	for _, reg := range []func(*topologies.Registry) error{embedded.Register, nats.Register, redis.Register} {
		if err := reg(topo); err != nil {
			t.Fatal(err)
		}
	}
	addr, _ := routertest.Start(t, cfg, router.Options{Actions: webhookRegistry(t), Topologies: topo, TracerProvider: tp})
	return "http://" + addr, rec
}

// waitSpans waits until rec holds an ended span of each name in trace
// id, and returns the trace's spans by name.
func waitSpans(t *testing.T, rec *tracetest.SpanRecorder, id trace.TraceID, names ...string) map[string]sdktrace.ReadOnlySpan {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		byName := map[string]sdktrace.ReadOnlySpan{}
		for _, s := range rec.Ended() {
			if s.SpanContext().TraceID() == id {
				byName[s.Name()] = s
			}
		}
		missing := slices.DeleteFunc(slices.Clone(names), func(n string) bool { _, ok := byName[n]; return ok })
		if len(missing) == 0 {
			return byName
		}
		if time.Now().After(deadline) {
			var all []string
			for _, s := range rec.Ended() {
				all = append(all, s.Name()+" "+s.SpanContext().TraceID().String())
			}
			t.Fatalf("trace %s: spans %v not recorded; recorded: %v", id, missing, all)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// traceIDOf returns the trace id of a traceparent header.
func traceIDOf(t *testing.T, traceparent string) trace.TraceID {
	t.Helper()
	parts := strings.Split(traceparent, "-")
	if len(parts) != 4 {
		t.Fatalf("traceparent %q is not version-traceid-spanid-flags", traceparent)
	}
	id, err := trace.TraceIDFromHex(parts[1])
	if err != nil {
		t.Fatalf("traceparent %q: %v", traceparent, err)
	}
	return id
}

// logTrace prints the spans, parents first, as docs/tracing.md shows
// them.
func logTrace(t *testing.T, spans []sdktrace.ReadOnlySpan) {
	t.Helper()
	var b strings.Builder
	for i, s := range spans {
		fmt.Fprintf(&b, "%d. %s (%s) span %s parent %s\n", i+1, s.Name(), s.SpanKind(), s.SpanContext().SpanID(), s.Parent().SpanID())
		for _, a := range s.Attributes() {
			fmt.Fprintf(&b, "     %s = %s\n", a.Key, a.Value.String())
		}
	}
	t.Logf("trace %s:\n%s", spans[0].SpanContext().TraceID(), b.String())
}

// One captured change makes one trace: capture → bus publish → bus
// consume → observer → action, each span the child of the one before,
// and the webhook receiver gets the action span's context in its
// traceparent header. Run on the nats topology (the context crosses
// JetStream in headers), the redis one (in stream entry fields), the
// embedded one, and with WAL capture (the capture span gives the commit
// LSN).
func TestTraceOfACapturedChange(t *testing.T) {
	for _, name := range []string{"nats", "redis", "embedded", "nats-wal"} {
		t.Run(name, func(t *testing.T) {
			topology, wal := strings.CutSuffix(name, "-wal")
			pool, schema := testenv.Postgres(t)
			_, changeLog := testenv.Postgres(t)
			ctx := context.Background()
			if _, err := pool.Exec(ctx, "CREATE TABLE "+schema+".orders (id int PRIMARY KEY, status text)"); err != nil {
				t.Fatal(err)
			}
			srv, got := hookReceiver(t)
			var capture string
			if wal {
				slot, publication := testenv.ReplicationNames(t)
				capture = fmt.Sprintf("capture = \"wal\"\nslot = %q\npublication = %q\n", slot, publication)
			}
			var bus string
			switch topology {
			case "nats":
				_, _, prefix := testenv.NATS(t)
				_, keys := testenv.Redis(t)
				bus = fmt.Sprintf(`
[nats]
url = %q
stream = %q
subject_prefix = %q
consumer = %q
[redis]
url = %q
key_prefix = %q
`, testenv.NATSURL(), strings.ToUpper(prefix), prefix, prefix, testenv.RedisURL(), keys)
			case "redis":
				_, keys := testenv.Redis(t)
				bus = fmt.Sprintf("[redis]\nurl = %q\nkey_prefix = %q\n", testenv.RedisURL(), keys)
			case "embedded":
				bus = fmt.Sprintf("[embedded]\ndata_dir = %q\n", t.TempDir())
			}
			url, rec := tracedRouter(t, fmt.Sprintf(`
topology = %q
http = { addr = "127.0.0.1:0" }
[router]
shutdown_timeout = "5s"
[tracing]
enabled = true
[[sources]]
name = "orders_db"
postgres_url = %q
tables = ["%s.orders"]
entities = { "%s.orders" = "Order" }
schema = %q
install = true
%s
%s
%s`, topology, testenv.PostgresURL(), schema, schema, changeLog, capture, bus, webhookObserver("shipped", srv.URL, "")))

			if _, err := pool.Exec(ctx, "INSERT INTO "+schema+".orders VALUES (1, 'new')"); err != nil {
				t.Fatal(err)
			}
			var traceparent string
			select {
			case traceparent = <-got:
			case <-time.After(30 * time.Second):
				var n int
				err := pool.QueryRow(ctx, "SELECT count(*) FROM "+changeLog+".change_log").Scan(&n)
				t.Fatalf("the webhook was not called (change log: %d rows, %v)", n, err)
			}
			id := traceIDOf(t, traceparent)
			names := []string{"capture orders_db", "publish events", "consume events", "observer shipped", "action shipped/0:webhook"}
			spans := waitSpans(t, rec, id, names...)
			chain := make([]sdktrace.ReadOnlySpan, len(names))
			for i, n := range names {
				chain[i] = spans[n]
				if i > 0 && chain[i].Parent().SpanID() != chain[i-1].SpanContext().SpanID() {
					t.Errorf("span %q: parent %s, want %q (%s)", n, chain[i].Parent().SpanID(), names[i-1], chain[i-1].SpanContext().SpanID())
				}
			}
			if chain[0].Parent().IsValid() {
				t.Errorf("the capture span has a parent %s; want it to be the root", chain[0].Parent().SpanID())
			}
			if want := "-" + chain[4].SpanContext().SpanID().String() + "-"; !strings.Contains(traceparent, want) {
				t.Errorf("webhook traceparent %q does not name the action span %s", traceparent, want)
			}
			if len(spans) != len(names) {
				t.Errorf("trace %s has %d spans, want %d: %v", id, len(spans), len(names), spans)
			}
			attrs := map[string]string{}
			for _, a := range chain[0].Attributes() {
				attrs[string(a.Key)] = a.Value.String()
			}
			switch {
			case wal && (!strings.Contains(attrs["db.postgresql.commit_lsn"], "/") || attrs["db.postgresql.xid"] == ""):
				t.Errorf("WAL capture span attributes %v lack the commit LSN or the transaction id", attrs)
			case !wal && (attrs["db.postgresql.xid"] == "" || attrs["millrace.change_log.position"] == ""):
				t.Errorf("capture span attributes %v lack the transaction id or the change-log position", attrs)
			}
			logTrace(t, chain)
			t.Logf("the webhook receiver got traceparent: %s", traceparent)
			// The capture handler's Watermill metrics: the change it took,
			// and its publish, under the handler's name.
			waitMetrics(t, url,
				`subscriber_messages_received_total{acked="acked",handler_name="capture_orders_db"`,
				`publish_time_seconds_count{handler_name="capture_orders_db",publisher_name="`)
		})
	}
}

// POST /v1/events continues the producer's traceparent: the ingest span
// is a child of the producer's span, and the webhook the event triggers
// carries the same trace id.
func TestIngestContinuesTraceparent(t *testing.T) {
	srv, got := hookReceiver(t)
	url, rec := tracedRouter(t, fmt.Sprintf(`
http = { addr = "127.0.0.1:0" }
[embedded]
data_dir = %q
[router]
shutdown_timeout = "5s"
[tracing]
enabled = true
%s`, t.TempDir(), webhookObserver("shipped", srv.URL, "")))

	const producer = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req, err := http.NewRequest(http.MethodPost, url+"/v1/events", strings.NewReader(string(newEvent("Order", "7"))))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", producer)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /v1/events = %d", resp.StatusCode)
	}
	select {
	case tp := <-got:
		if id := traceIDOf(t, tp); id.String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
			t.Errorf("webhook traceparent %q: trace id %s, want the producer's 4bf92f3577b34da6a3ce929d0e0e4736", tp, id)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the webhook was not called")
	}
	id, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spans := waitSpans(t, rec, id, "POST /v1/events", "publish events", "consume events", "observer shipped", "action shipped/0:webhook")
	if p := spans["POST /v1/events"].Parent(); p.SpanID().String() != "00f067aa0ba902b7" || !p.IsRemote() {
		t.Errorf("ingest span parent %s (remote %v); want the producer's span 00f067aa0ba902b7", p.SpanID(), p.IsRemote())
	}
}
