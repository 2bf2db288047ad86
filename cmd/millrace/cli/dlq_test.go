package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/millrace/millrace/stores"

	"github.com/google/uuid"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/webhook"
	"github.com/millrace/millrace/internal/routertest"
	"github.com/millrace/millrace/router"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/embedded"
)

// runCLI runs the command line as Main does, with every built-in
// registered, and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runCLIWith(t, Defaults(), args...)
}

// runCLIWith is runCLI with the registries of o.
func runCLIWith(t *testing.T, o Options, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newRoot(o, &out, &errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	var ee *exitError
	switch {
	case err == nil:
		code = ExitOK
	case errors.As(err, &ee):
		code = ee.code
		if ee.err != nil {
			errOut.WriteString(ee.err.Error())
		}
	default:
		code = ExitFailure
		errOut.WriteString(err.Error())
	}
	return code, out.String(), errOut.String()
}

func TestDLQUsage(t *testing.T) {
	t.Setenv(DefaultAdminTokenEnv, "tok")
	// Nothing listens there: usage errors must be caught before any call.
	addr := "--addr=127.0.0.1:1"
	for _, args := range [][]string{
		{"dlq"},
		{"dlq", "nonsense"},
		{"dlq", "list", "extra"},
		{"dlq", "list", "--limit", "x", addr},
		{"dlq", "list", "--limit", "-1", addr},
		{"dlq", "list", "--bogus", addr},
		{"dlq", "show", addr},
		{"dlq", "show", "1", "2", addr},
		{"dlq", "replay", addr},
		{"dlq", "replay", "--all", "7", addr},
		{"dlq", "replay", "--observer", "a", "7", addr},
		{"dlq", "replay", "--entity", "/Order/1", "7", addr},
		{"dlq", "replay", "--entity", "/Order/1", "--all", addr},
		{"dlq", "replay", "--entity", "/Order/1", "--all-actions", addr},
		{"dlq", "replay", "--all", "--wait", "1s", addr},
		{"dlq", "skip", addr},
		{"dlq", "skip", "--entity", "/Order/1", "7", addr},
		{"dlq", "purge", addr},
		{"dlq", "list", addr, "--token-env", "MILLRACE_TEST_NO_SUCH_VARIABLE"},
	} {
		if code, _, stderr := runCLI(t, args...); code != ExitInvalid {
			t.Errorf("millrace %s: exit %d (%s); want %d", strings.Join(args, " "), code, stderr, ExitInvalid)
		}
	}
	if code, _, stderr := runCLI(t, "dlq", "list", addr, "--timeout", "2s"); code != ExitFailure || !strings.Contains(stderr, "dlq") {
		t.Errorf("dlq list against nothing: exit %d (%s); want %d", code, stderr, ExitFailure)
	}
}

func TestDLQShowPayload(t *testing.T) {
	for _, c := range []struct {
		payload  []byte
		encoding string
		want     string
	}{
		{[]byte(`{"id":"x","n":1}`), "json", `{"id":"x","n":1}`},
		{[]byte{0xff, 0x00, 'a'}, "base64", `"/wBh"`},
		{[]byte(`{"truncated":`), "base64", `"eyJ0cnVuY2F0ZWQiOg=="`},
		{[]byte{}, "base64", `""`},
	} {
		v := showView(stores.DeadLetter{ID: "1", Payload: c.payload})
		if v.PayloadEncoding != c.encoding || string(v.Payload) != c.want {
			t.Errorf("showView(%q) = %s %s; want %s %s", c.payload, v.PayloadEncoding, v.Payload, c.encoding, c.want)
		}
		if _, err := json.Marshal(v); err != nil {
			t.Errorf("showView(%q) does not marshal: %v", c.payload, err)
		}
	}
}

// hookServer is a webhook endpoint that answers 503 until it is fixed,
// and counts what it received per path.
type hookServer struct {
	*httptest.Server
	fixed atomic.Bool

	mu        sync.Mutex
	failed    map[string]int // path -> requests answered 503
	delivered map[string]int // path -> requests answered 200
}

func newHookServer(t *testing.T) *hookServer {
	h := &hookServer{failed: map[string]int{}, delivered: map[string]int{}}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		_, _ = io.Copy(io.Discard, req.Body)
		h.mu.Lock()
		defer h.mu.Unlock()
		// /other always works; /hook only once fixed.
		if req.URL.Path == "/hook" && !h.fixed.Load() {
			h.failed[req.URL.Path]++
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		h.delivered[req.URL.Path]++
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *hookServer) counts(path string) (failed, delivered int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failed[path], h.delivered[path]
}

// adminConfig is the start of a config for startMillrace: a free port,
// the admin API on with token (set in the variable the dlq commands
// read), the embedded topology's data in a temp dir of the test.
func adminConfig(t *testing.T, token string) string {
	t.Helper()
	t.Setenv(DefaultAdminTokenEnv, token)
	return fmt.Sprintf(`
[http]
addr = "127.0.0.1:0"
admin_token_env = %q
[embedded]
data_dir = %q
`, DefaultAdminTokenEnv, t.TempDir())
}

// startMillrace runs millrace in-process on the embedded topology, with
// its data in dataDir, until the returned stop is called.
func startMillrace(t *testing.T, cfgText string) (addr string, stop func()) {
	t.Helper()
	return startMillraceOn(t, cfgText, embedded.Topology())
}

// startMillraceOn is startMillrace with top registered as the topology.
func startMillraceOn(t *testing.T, cfgText string, top topologies.Topology) (addr string, stop func()) {
	t.Helper()
	cfg, err := config.Parse([]byte(cfgText), nil)
	if err != nil {
		t.Fatal(err)
	}
	actions := handlers.NewRegistry()
	if err := webhook.Register(actions); err != nil {
		t.Fatal(err)
	}
	topo := topologies.NewRegistry()
	if err := topo.Register(top); err != nil {
		t.Fatal(err)
	}
	return routertest.Start(t, cfg, router.Options{Actions: actions, Topologies: topo})
}

// listDLQ asks the admin API for the dead letters.
func listDLQ(t *testing.T, addr, token string) router.DeadLetterList {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/v1/dlq", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var l router.DeadLetterList
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /v1/dlq: %s %s", resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		t.Fatal(err)
	}
	return l
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDeadLetterSurvivesRestartAndReplays: a webhook that keeps failing
// lands in the dead-letter store after its attempts; the entry survives a
// restart of millrace; once the endpoint is fixed, dlq replay delivers
// it exactly once, to the observer that failed only, and the entry is
// gone.
func TestDeadLetterSurvivesRestartAndReplays(t *testing.T) {
	const token = "replay-token"
	hooks := newHookServer(t)
	cfgText := adminConfig(t, token) + fmt.Sprintf(`
[router]
shutdown_timeout = "5s"
[observers.shipped]
entity = "Order"
retry = { max_attempts = 3, backoff = "fixed", initial = "50ms", max = "1s" }
actions = [{ type = "webhook", url = "%s/hook", allow_private = true, timeout = "5s" }]
[observers.audit]
entity = "Order"
actions = [{ type = "webhook", url = "%s/other", allow_private = true, timeout = "5s" }]
`, hooks.URL, hooks.URL)

	addr, stop := startMillrace(t, cfgText)
	ev := &event.Event{ID: uuid.NewString(), Type: event.Update, Entity: "Order", EntityID: "7",
		Data: map[string]any{"status": "shipped"}, Timestamp: time.Now().UTC()}
	body, err := event.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	if code, out, stderr := runCLI(t, "emit", "--addr", addr, "--file", writeTemp(t, body)); code != ExitOK {
		t.Fatalf("emit: exit %d %s %s", code, out, stderr)
	}
	waitFor(t, "the dead letter", func() bool { return listDLQ(t, addr, token).Total == 1 })
	if failed, _ := hooks.counts("/hook"); failed != 3 {
		t.Errorf("/hook was tried %d times before dead-lettering; want 3 (max_attempts)", failed)
	}
	stop()

	addr, _ = startMillrace(t, cfgText)
	l := listDLQ(t, addr, token)
	if l.Total != 1 || len(l.Entries) != 1 {
		t.Fatalf("after a restart the store holds %+v; want the one entry", l)
	}
	e := l.Entries[0]
	if e.EventID != ev.ID || e.Observer != "shipped" || e.Reason != stores.ReasonExhausted || e.Attempts != 3 || e.Topic == "" {
		t.Errorf("entry = %+v; want event %s, observer shipped, reason exhausted, 3 attempts", e, ev.ID)
	}

	code, out, stderr := runCLI(t, "dlq", "list", "--addr", addr)
	if code != ExitOK || !strings.Contains(out, e.ID) || !strings.Contains(out, "shipped") || !strings.Contains(out, "exhausted") {
		t.Errorf("dlq list: exit %d\n%s%s", code, out, stderr)
	}
	code, out, stderr = runCLI(t, "dlq", "show", e.ID, "--addr", addr)
	var shown struct {
		ID              string `json:"id"`
		PayloadEncoding string `json:"payload_encoding"`
		Payload         struct {
			ID string `json:"id"`
		} `json:"payload"`
	}
	if code != ExitOK || json.Unmarshal([]byte(out), &shown) != nil || shown.ID != e.ID || shown.PayloadEncoding != "json" || shown.Payload.ID != ev.ID {
		t.Errorf("dlq show: exit %d\n%s%s", code, out, stderr)
	}
	if code, out, stderr = runCLI(t, "dlq", "replay", "--all", "--dry-run", "--addr", addr); code != ExitOK || !strings.Contains(out, "would replay 1") {
		t.Errorf("dlq replay --all --dry-run: exit %d\n%s%s", code, out, stderr)
	}
	if failed, delivered := hooks.counts("/hook"); failed != 3 || delivered != 0 {
		t.Errorf("/hook before the fix: %d failed, %d delivered; want 3 and 0 (nothing redelivered by the restart or the dry run)", failed, delivered)
	}

	hooks.fixed.Store(true)
	code, out, stderr = runCLI(t, "dlq", "replay", e.ID, "--addr", addr)
	if code != ExitOK || !strings.Contains(out, "replayed 1") {
		t.Fatalf("dlq replay: exit %d\n%s%s", code, out, stderr)
	}
	waitFor(t, "the replayed delivery", func() bool { _, d := hooks.counts("/hook"); return d >= 1 })
	// Anything else still on its way would arrive well within this.
	time.Sleep(2 * time.Second)
	if _, delivered := hooks.counts("/hook"); delivered != 1 {
		t.Errorf("/hook received %d deliveries after the replay; want exactly 1", delivered)
	}
	if _, delivered := hooks.counts("/other"); delivered != 1 {
		t.Errorf("/other (observer audit, which had succeeded) received %d deliveries; want 1, the replay is for shipped only", delivered)
	}
	if l := listDLQ(t, addr, token); l.Total != 0 {
		t.Errorf("the store still holds %+v after the replay", l)
	}
	if code, out, _ = runCLI(t, "dlq", "list", "--addr", addr); code != ExitOK || !strings.Contains(out, "no dead letters") {
		t.Errorf("dlq list after the replay: exit %d\n%s", code, out)
	}
	if code, out, _ = runCLI(t, "dlq", "replay", e.ID, "--addr", addr); code != ExitFailure || !strings.Contains(out, "failed "+e.ID) {
		t.Errorf("dlq replay of a replayed entry: exit %d\n%s; want %d and the entry among the failures", code, out, ExitFailure)
	}
	if code, out, _ = runCLI(t, "dlq", "purge", "--yes", "--addr", addr); code != ExitOK || !strings.Contains(out, "purged 0") {
		t.Errorf("dlq purge --yes: exit %d\n%s", code, out)
	}
	if code, _, stderr = runCLI(t, "dlq", "list", "--addr", addr, "--token-env", "MILLRACE_TEST_WRONG_TOKEN"); code != ExitInvalid {
		t.Errorf("dlq list with an unset token variable: exit %d %s; want %d", code, stderr, ExitInvalid)
	}
	t.Setenv("MILLRACE_TEST_WRONG_TOKEN", "nope")
	if code, _, stderr = runCLI(t, "dlq", "list", "--addr", addr, "--token-env", "MILLRACE_TEST_WRONG_TOKEN"); code != ExitFailure || !strings.Contains(stderr, "401") {
		t.Errorf("dlq list with a wrong token: exit %d %s; want %d and 401", code, stderr, ExitFailure)
	}
}

func writeTemp(t *testing.T, b []byte) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "event.json")
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestDLQListSaysWhenDeadLettersVanish: on a topology whose dead-letter
// store lives in the process (no DurableDeadLetters in its features),
// dlq list says that the entries vanish when it stops; on one whose
// store is durable it says nothing of the kind.
func TestDLQListSaysWhenDeadLettersVanish(t *testing.T) {
	const token = "volatile-token"
	cfgText := adminConfig(t, token) + `
[observers.o]
actions = [{ type = "webhook", url = "http://127.0.0.1:9/hook", allow_private = true }]
`
	const note = "note: the embedded topology keeps dead letters in the process's memory: they vanish when it stops"

	durable := embedded.Topology()
	addr, stop := startMillraceOn(t, cfgText, durable)
	code, out, stderr := runCLI(t, "dlq", "list", "--addr", addr)
	if code != ExitOK || strings.Contains(out, "vanish") || !strings.Contains(out, "no dead letters") {
		t.Errorf("dlq list on a durable store: exit %d\n%s%s; want no note", code, out, stderr)
	}
	if l := listDLQ(t, addr, token); l.Volatile || l.Topology != "embedded" {
		t.Errorf("GET /v1/dlq on a durable store = %+v; want volatile unset, topology embedded", l)
	}
	stop()

	volatile := embedded.Topology()
	volatile.Features.DurableDeadLetters = false
	addr, _ = startMillraceOn(t, cfgText, volatile)
	code, out, stderr = runCLI(t, "dlq", "list", "--addr", addr)
	if code != ExitOK || !strings.HasPrefix(out, note+"\n") || !strings.Contains(out, "no dead letters") {
		t.Errorf("dlq list on a volatile store: exit %d\n%s%s; want it to start with %q", code, out, stderr, note)
	}
	if l := listDLQ(t, addr, token); !l.Volatile {
		t.Errorf("GET /v1/dlq on a volatile store = %+v; want volatile set", l)
	}
}

// dlq replay --all-actions asks the server to run every action again;
// without the flag it does not.
func TestDLQReplayAllActionsFlag(t *testing.T) {
	t.Setenv(DefaultAdminTokenEnv, "tok")
	var (
		mu   sync.Mutex
		reqs []router.ReplayRequest
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rr router.ReplayRequest
		if err := json.NewDecoder(r.Body).Decode(&rr); err != nil {
			t.Errorf("body: %v", err)
		}
		mu.Lock()
		reqs = append(reqs, rr)
		mu.Unlock()
		_ = json.NewEncoder(w).Encode(router.ReplayResponse{Replayed: len(rr.IDs), IDs: rr.IDs})
	}))
	t.Cleanup(srv.Close)
	addr := "--addr=" + strings.TrimPrefix(srv.URL, "http://")
	for _, args := range [][]string{{"dlq", "replay", "7", addr}, {"dlq", "replay", "--all-actions", "7", addr}} {
		if code, out, stderr := runCLI(t, args...); code != ExitOK || !strings.Contains(out, "replayed 1") {
			t.Fatalf("millrace %s: exit %d\n%s%s", strings.Join(args, " "), code, out, stderr)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reqs) != 2 || reqs[0].AllActions || !reqs[1].AllActions {
		t.Errorf("replay requests = %+v; want all_actions only with --all-actions", reqs)
	}
}

// TestDLQExportFeedsTry: the events of 1000 real dead letters, exported
// with dlq export, are a file millrace try runs whole; an entry whose
// payload is not an event and a second entry of one event are skipped
// and counted on stderr.
func TestDLQExportFeedsTry(t *testing.T) {
	const token = "export-token"
	t.Setenv("TRY_TEST_SECRET", "whsec_"+"c2VjcmV0LWtleS0xMjM0NTY3OA==")
	evs := orderEvents(1000)
	first, err := event.Encode(evs[0])
	if err != nil {
		t.Fatal(err)
	}
	// The topology's store gets the two odd entries before any event.
	top := embedded.Topology()
	build := top.Build
	top.Build = func(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*topologies.Backend, error) {
		b, err := build(ctx, cfg, logger)
		if err != nil {
			return nil, err
		}
		for _, dl := range []stores.DeadLetter{
			{Reason: stores.ReasonUndecodable, Error: "invalid event", Topic: "events", Payload: []byte("not an event")},
			{EventID: evs[0].ID, Observer: "other", Reason: stores.ReasonPermanent, Topic: "events", Payload: first},
		} {
			if _, err := b.DeadLetters.Put(ctx, dl); err != nil {
				return nil, errors.Join(err, b.Close())
			}
		}
		return b, nil
	}
	// The endpoint refuses every event for good (400): a dead letter each.
	refuse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
	}))
	t.Cleanup(refuse.Close)
	addr, _ := startMillraceOn(t, adminConfig(t, token)+fmt.Sprintf(`
[router]
shutdown_timeout = "5s"
[observers.failing]
entity = "Order"
actions = [{ type = "webhook", url = "%s/hook", allow_private = true, timeout = "5s" }]
`, refuse.URL), top)
	postEvents(t, addr, evs)
	waitFor(t, "1002 dead letters", func() bool { return listDLQ(t, addr, token).Total == 1002 })

	out := filepath.Join(t.TempDir(), "dead.jsonl")
	code, _, stderr := runCLI(t, "dlq", "export", "--addr", addr, "--out", out)
	if code != ExitOK || !strings.Contains(stderr, "exported 1000 event(s)") ||
		!strings.Contains(stderr, "skipped 1 dead letter(s) whose payload is not an event") ||
		!strings.Contains(stderr, "skipped 1 dead letter(s) of an event already written") {
		t.Fatalf("dlq export: exit %d: %s", code, stderr)
	}
	if got := readIDs(t, out); len(got) != 1000 {
		t.Fatalf("the export holds %d events; want 1000", len(got))
	}
	assertTryDiff(t, out)

	code, _, stderr = runCLI(t, "dlq", "export", "--addr", addr, "--out", out, "--observer", "other", "--since", "1h")
	if got := readIDs(t, out); code != ExitOK || len(got) != 1 || got[0] != evs[0].ID {
		t.Errorf("dlq export --observer other: exit %d %s, %v; want the one event %s", code, stderr, got, evs[0].ID)
	}
	if code, _, stderr := runCLI(t, "dlq", "export", "--addr", addr); code != ExitInvalid || !strings.Contains(stderr, "--out") {
		t.Errorf("dlq export without --out: exit %d %s; want %d", code, stderr, ExitInvalid)
	}
	if l := listDLQ(t, addr, token); l.Total != 1002 {
		t.Errorf("after the exports the store holds %d entries; want the 1002, untouched", l.Total)
	}
}
