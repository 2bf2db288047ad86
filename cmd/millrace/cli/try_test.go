package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/webhook"
	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/try"
)

// orderEvents returns n UPDATE Order events: entity i has total i and is
// shipped when i is even.
func orderEvents(n int) []*event.Event {
	evs := make([]*event.Event, n)
	base := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	for i := range evs {
		status := "pending"
		if i%2 == 0 {
			status = "shipped"
		}
		evs[i] = &event.Event{
			ID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i), Type: event.Update, Entity: "Order",
			EntityID: strconv.Itoa(i), Data: map[string]any{"status": status, "total": int64(i)},
			Timestamp: base.Add(time.Duration(i) * time.Second),
		}
	}
	return evs
}

func writeEvents(t *testing.T, evs []*event.Event) string {
	t.Helper()
	var b strings.Builder
	for _, ev := range evs {
		p, err := event.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(p)
		b.WriteByte('\n')
	}
	path := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// tryRig is a config whose actions would reach real services: a webhook
// receiver, a Slack endpoint, an SMTP server, Redis keys, a SQL function
// that inserts into a table.
type tryRig struct {
	hits      atomic.Int64 // webhook requests
	slackHits atomic.Int64
	smtpConns atomic.Int64
	url       string
	smtpPort  int
	prefix    string
	schema    string
	check     func(t *testing.T) // fails the test when anything was touched
}

func newTryRig(t *testing.T) *tryRig {
	r := &tryRig{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { r.hits.Add(1) }))
	t.Cleanup(srv.Close)
	r.url = srv.URL
	slackSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { r.slackHits.Add(1) }))
	t.Cleanup(slackSrv.Close)
	t.Setenv("TRY_TEST_SLACK_URL", slackSrv.URL+"/services/T000/B000/XXXX")
	// An SMTP server only needs to be reached to count: every connection
	// is a send attempt.
	smtp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = smtp.Close() })
	r.smtpPort = smtp.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := smtp.Accept()
			if err != nil {
				return
			}
			r.smtpConns.Add(1)
			_ = c.Close()
		}
	}()
	rc, prefix := testenv.Redis(t)
	pool, schema := testenv.Postgres(t)
	r.prefix, r.schema = prefix, schema
	ctx := context.Background()
	for i := range 1000 {
		if err := rc.Set(ctx, prefix+"order:"+strconv.Itoa(i), "cached", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE calls (ev jsonb);
		CREATE FUNCTION on_order(ev jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO calls VALUES (ev) $$`); err != nil {
		t.Fatal(err)
	}
	r.check = func(t *testing.T) {
		t.Helper()
		if n := r.hits.Load(); n != 0 {
			t.Errorf("the webhook receiver got %d request(s)", n)
		}
		if n := r.slackHits.Load(); n != 0 {
			t.Errorf("the Slack endpoint got %d request(s)", n)
		}
		if n := r.smtpConns.Load(); n != 0 {
			t.Errorf("the SMTP server got %d connection(s)", n)
		}
		n, err := rc.Exists(ctx, prefix+"order:0", prefix+"order:500", prefix+"order:999").Result()
		if err != nil || n != 3 {
			t.Errorf("cache keys: %d of 3 left (%v)", n, err)
		}
		var calls int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM calls").Scan(&calls); err != nil || calls != 0 {
			t.Errorf("the SQL function ran %d time(s) (%v)", calls, err)
		}
	}
	return r
}

// config returns a config with the given shipped condition and publish
// body.
func (r *tryRig) config(t *testing.T, condition, publishBody string) string {
	return writeConfig(t, fmt.Sprintf(`
[redis]
url = %q
[databases.main]
url = %q
[smtp]
host = "127.0.0.1"
port = %d
tls = "none"
from = "millrace@example.com"

[observers.order_shipped]
event = "UPDATE"
entity = "Order"
condition = %q
[[observers.order_shipped.actions]]
type = "webhook"
url = "%s/shipped"
allow_private = true
secret_env = "TRY_TEST_SECRET"
body = '{"order": "{{ .entity_id }}"}'

[observers.order_cache]
event = "*"
entity = "Order"
[[observers.order_cache.actions]]
type = "cache_invalidate"
keys = ["%sorder:{{ .entity_id }}"]

[observers.order_sql]
event = "UPDATE"
entity = "Order"
[[observers.order_sql.actions]]
type = "sql"
database = "main"
function = "on_order"

[observers.order_publish]
event = "UPDATE"
entity = "Order"
[[observers.order_publish.actions]]
type = "publish"
topic = "orders_out"
body = '%s'

[observers.order_big]
event = "UPDATE"
entity = "Order"
condition = "data.total >= 990"
[[observers.order_big.actions]]
type = "slack"
url_env = "TRY_TEST_SLACK_URL"
allow_private = true
text = "big order {{ .entity_id }}"
[[observers.order_big.actions]]
type = "email"
to = ["sales@example.com"]
body = "order {{ .entity_id }}: {{ .data.total }}"
`, testenv.RedisURL(), testenv.PostgresSchemaURL(t, r.schema), r.smtpPort, condition, r.url, r.prefix, publishBody))
}

const (
	oldCondition = "data.status == 'shipped'"
	newCondition = "(data.status == 'shipped' && data.total >= 500) || data.total >= 900"
	oldBody      = `{"order": "{{ .entity_id }}"}`
	newBody      = `{"order": "{{ .entity_id }}", "total": {{ .data.total }}}`
)

func runTry(t *testing.T, args ...string) (int, *try.Report, string) {
	t.Helper()
	code, out, stderr := runCLI(t, append([]string{"try", "--json"}, args...)...)
	var rep try.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("millrace try: exit %d, output is not a report: %v\n%s\n%s", code, err, out, stderr)
	}
	return code, &rep, stderr
}

// TestTryDiff: a condition and a template changed between two configs;
// try shows exactly the effects added, removed and changed, and nothing
// is sent: no request, no deleted key, no SQL call.
func TestTryDiff(t *testing.T) {
	t.Setenv("TRY_TEST_SECRET", "whsec_"+"c2VjcmV0LWtleS0xMjM0NTY3OA==")
	assertTryDiff(t, writeEvents(t, orderEvents(1000)))
}

// assertTryDiff runs try on events, 1000 envelopes of orderEvents, with
// the condition and template of one config changed, and checks every
// effect added, removed and changed, and that nothing was sent. The
// caller sets TRY_TEST_SECRET.
func assertTryDiff(t *testing.T, events string) {
	t.Helper()
	r := newTryRig(t)
	oldCfg := r.config(t, oldCondition, oldBody)
	newCfg := r.config(t, newCondition, newBody)

	code, rep, stderr := runTry(t, "-c", newCfg, "--against", oldCfg, events)
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if rep.Events != 1000 || len(rep.Malformed) != 0 || rep.Regressions != 0 {
		t.Fatalf("events %d, malformed %v, regressions %d", rep.Events, rep.Malformed, rep.Regressions)
	}
	want := map[string]try.Summary{
		"order_shipped": {Observer: "order_shipped", MatchedOld: 500, MatchedNew: 300, ActionsOld: 500, ActionsNew: 300},
		"order_cache":   {Observer: "order_cache", MatchedOld: 1000, MatchedNew: 1000, ActionsOld: 1000, ActionsNew: 1000},
		"order_sql":     {Observer: "order_sql", MatchedOld: 1000, MatchedNew: 1000, ActionsOld: 1000, ActionsNew: 1000},
		"order_publish": {Observer: "order_publish", MatchedOld: 1000, MatchedNew: 1000, ActionsOld: 1000, ActionsNew: 1000},
		// Unchanged between the configs: effects, but no changes.
		"order_big": {Observer: "order_big", MatchedOld: 10, MatchedNew: 10, ActionsOld: 20, ActionsNew: 20},
	}
	if len(rep.Observers) != len(want) {
		t.Errorf("observers: %+v", rep.Observers)
	}
	for _, s := range rep.Observers {
		if s != want[s.Observer] {
			t.Errorf("summary %+v, want %+v", s, want[s.Observer])
		}
	}
	counts := map[string]int{}
	for _, res := range rep.Results {
		i, _ := strconv.Atoi(res.EntityID)
		shippedOld := i%2 == 0
		shippedNew := (i%2 == 0 && i >= 500) || i >= 900
		var sawPublish bool
		for _, c := range res.Changes {
			counts[c.Type+" "+c.Change]++
			switch c.Action {
			case "observers.order_publish.actions[0]":
				sawPublish = true
				if c.Change != "changed" || c.Old.Body != fmt.Sprintf(`{"order": "%d"}`, i) ||
					c.New.Body != fmt.Sprintf(`{"order": "%d", "total": %d}`, i, i) {
					t.Errorf("event %d: publish change %+v", i, c)
				}
				if !containsLine(c.Diff, fmt.Sprintf(`+   "total": %d`, i)) || !containsLine(c.Diff, fmt.Sprintf(`+   "order": "%d",`, i)) {
					t.Errorf("event %d: publish diff %q", i, c.Diff)
				}
			case "observers.order_shipped.actions[0]":
				switch {
				case shippedOld && !shippedNew:
					if c.Change != "removed" || c.Old == nil || c.Old.Target != r.url+"/shipped" {
						t.Errorf("event %d: webhook change %+v, want removed", i, c)
					}
				case !shippedOld && shippedNew:
					if c.Change != "added" || c.New == nil || c.New.Body != fmt.Sprintf(`{"order": "%d"}`, i) {
						t.Errorf("event %d: webhook change %+v, want added", i, c)
					}
					checkSigned(t, c.New)
				default:
					t.Errorf("event %d: unexpected webhook change %+v", i, c)
				}
			default:
				t.Errorf("event %d: unexpected change %+v", i, c)
			}
		}
		if !sawPublish {
			t.Errorf("event %d: no publish change", i)
		}
	}
	wantCounts := map[string]int{"publish changed": 1000, "webhook removed": 250, "webhook added": 50}
	if fmt.Sprint(counts) != fmt.Sprint(wantCounts) {
		t.Errorf("changes %v, want %v", counts, wantCounts)
	}
	r.check(t)

	// Without --against: every effect of the new config, rendered.
	code, rep, stderr = runTry(t, "-c", newCfg, events)
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	byType := map[string]int{}
	for _, res := range rep.Results {
		for _, e := range res.Effects {
			byType[e.Type]++
			if e.Effect == nil {
				t.Fatalf("effect not rendered: %+v", e)
			}
			switch e.Type {
			case "cache_invalidate":
				if want := "UNLINK " + r.prefix + "order:" + res.EntityID + "\n"; e.Effect.Body != want {
					t.Errorf("cache_invalidate body %q, want %q", e.Effect.Body, want)
				}
			case "sql":
				if e.Effect.Target != `SELECT "on_order"($1::jsonb)` || !strings.Contains(e.Effect.Body, `"id":"`+res.ID+`"`) {
					t.Errorf("sql effect %+v", e.Effect)
				}
			case "webhook":
				checkSigned(t, e.Effect)
			case "slack":
				if e.Effect.Method != "POST" || !strings.Contains(e.Effect.Body, "big order "+res.EntityID) {
					t.Errorf("slack effect %+v", e.Effect)
				}
			case "email":
				if e.Effect.Headers["To"] != "<sales@example.com>" || !strings.Contains(e.Effect.Body, "order "+res.EntityID+": ") {
					t.Errorf("email effect %+v", e.Effect)
				}
			}
		}
	}
	if fmt.Sprint(byType) != fmt.Sprint(map[string]int{"cache_invalidate": 1000, "email": 10, "publish": 1000, "slack": 10, "sql": 1000, "webhook": 300}) {
		t.Errorf("effects by type %v", byType)
	}
	r.check(t)
}

func containsLine(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}

// checkSigned verifies a rendered webhook's signature as a receiver
// would.
func checkSigned(t *testing.T, e *handlers.Effect) {
	t.Helper()
	key, err := webhook.DecodeSecret(os.Getenv("TRY_TEST_SECRET"))
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	for k, v := range e.Headers {
		h.Set(k, v)
	}
	ts, _ := strconv.ParseInt(h.Get("Webhook-Timestamp"), 10, 64)
	if err := webhook.Verify(key, h, []byte(e.Body), time.Unix(ts, 0), time.Minute); err != nil {
		t.Errorf("rendered webhook does not verify: %v (%v)", err, e.Headers)
	}
}

// Malformed lines are reported with their number and skipped; a
// condition that fails on real data is reported with its key path, and
// makes try exit 1 when the old config handled the event.
func TestTryBadInput(t *testing.T) {
	cfg := func(cond string) string {
		return writeConfig(t, `
[observers.big]
event = "*"
entity = "Order"
condition = "`+cond+`"
[[observers.big.actions]]
type = "log"
message = "big order {{ .entity_id }}"
`)
	}
	oldCfg, newCfg := cfg("data.total != nil"), cfg("data.total > 100")
	path := filepath.Join(t.TempDir(), "events.jsonl")
	lines := `{"id":"00000000-0000-4000-8000-000000000001","event_type":"INSERT","entity_type":"Order","entity_id":"1","data":{"total":500}}
not json

{"id":"00000000-0000-4000-8000-000000000002","event_type":"NOPE","entity_type":"Order","entity_id":"2"}
{"id":"00000000-0000-4000-8000-000000000003","event_type":"INSERT","entity_type":"Order","entity_id":"3","data":{"total":"lots"}}
`
	if err := os.WriteFile(path, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	code, rep, stderr := runTry(t, "-c", newCfg, "--against", oldCfg, path)
	if code != ExitFailure || !strings.Contains(stderr, "the new config errors on 1 event(s)") {
		t.Errorf("exit %d, stderr %q; want 1 for the failing condition", code, stderr)
	}
	if rep.Events != 2 || len(rep.Malformed) != 2 || rep.Malformed[0].Line != 2 || rep.Malformed[1].Line != 4 {
		t.Errorf("events %d, malformed %+v; want 2 events, lines 2 and 4 malformed", rep.Events, rep.Malformed)
	}
	if rep.Regressions != 1 || len(rep.Results) != 1 || rep.Results[0].Line != 5 {
		t.Fatalf("results %+v", rep.Results)
	}
	res := rep.Results[0]
	if len(res.ErrorsNew) != 1 || res.ErrorsNew[0].Path != "observers.big.condition" || len(res.ErrorsOld) != 0 ||
		len(res.Changes) != 1 || res.Changes[0].Change != "removed" || res.Changes[0].Old.Body != "big order 3" {
		t.Errorf("line 5: %+v", res)
	}
	// The same failure in both configs is no regression.
	if code, rep, _ := runTry(t, "-c", newCfg, "--against", newCfg, path); code != ExitOK || rep.Regressions != 0 {
		t.Errorf("new against itself: exit %d, %d regression(s)", code, rep.Regressions)
	}
}

// A config that does not validate exits 2 with its key paths, as
// millrace validate does; so does one whose actions cannot be built.
func TestTryInvalidConfig(t *testing.T) {
	good := writeConfig(t, "[observers.o]\n[[observers.o.actions]]\ntype = \"noop\"\n")
	events := writeEvents(t, orderEvents(1))
	for name, tt := range map[string]struct{ toml, want string }{
		"unknown key":   {"[observers.o]\nconditon = \"true\"\n", "observers.o.conditon"},
		"bad condition": {"[observers.o]\ncondition = \"data.\"\n[[observers.o.actions]]\ntype = \"noop\"\n", "observers.o.condition"},
		"unset secret":  {"[observers.o]\n[[observers.o.actions]]\ntype = \"slack\"\nurl_env = \"TRY_TEST_UNSET\"\n", "observers.o.actions[0] (slack): url_env: environment variable TRY_TEST_UNSET is not set"},
	} {
		t.Run(name, func(t *testing.T) {
			bad := writeConfig(t, tt.toml)
			for _, args := range [][]string{{"-c", bad, events}, {"-c", good, "--against", bad, events}} {
				code, _, stderr := runCLI(t, append([]string{"try"}, args...)...)
				if code != ExitInvalid || !strings.Contains(stderr, tt.want) {
					t.Errorf("try %v: exit %d, stderr %q; want 2 and %q", args, code, stderr, tt.want)
				}
			}
		})
	}
}

// An action type of the user's own that cannot render is listed as one
// that would run.
func TestTryNotRendered(t *testing.T) {
	o := Defaults()
	handlers.MustRegister(o.Actions, "mine", func(context.Context, noConfig, handlers.Deps) (handlers.Action, error) {
		return handlers.ActionFunc(func(context.Context, *event.Event) error { panic("executed in a dry run") }), nil
	})
	path := writeConfig(t, "[observers.o]\n[[observers.o.actions]]\ntype = \"mine\"\n")
	events := writeEvents(t, orderEvents(3))
	code, out, stderr := runCLIWith(t, o, "try", "-c", path, events)
	if code != ExitOK || strings.Count(out, "observers.o.actions[0] (mine): would run, not rendered") != 3 {
		t.Errorf("exit %d\n%s\n%s", code, out, stderr)
	}
}

type noConfig struct{}

func (noConfig) Validate() error { return nil }
