package router

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/try"
)

// TestAdminTry: POST /v1/try needs the admin token and answers the try
// report of a config against another, with the malformed lines, and
// sends nothing; a config that does not validate is a 400 naming the
// field and the key path.
func TestAdminTry(t *testing.T) {
	r, addr, token, _ := adminRouter(t)
	hits := 0
	var mu sync.Mutex
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
	}))
	t.Cleanup(hook.Close)
	conf := func(min int, body string) string {
		return fmt.Sprintf(`
[observers.big]
entity = "Order"
condition = "data.total >= %d"
actions = [{ type = "webhook", url = "%s/hook", allow_private = true, body = '%s' }]
`, min, hook.URL, body)
	}
	var lines []string
	for i, total := range []int{5, 15, 25} {
		ev := &event.Event{ID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i), Type: event.Insert, Entity: "Order",
			EntityID: strconv.Itoa(i), Data: map[string]any{"total": int64(total)}, Timestamp: time.Now().UTC()}
		b, err := event.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, string(b))
		if i == 0 {
			lines = append(lines, `{"not": "an event"`)
		}
	}
	req := TryRequest{
		Config:  conf(20, `{"order": "{{ .entity_id }}", "total": {{ .data.total }}}`),
		Against: conf(10, `{"order": "{{ .entity_id }}"}`),
		Events:  strings.Join(lines, "\n"),
	}
	if code := adminCall(t, http.MethodPost, addr+"/v1/try", "", req, nil); code != http.StatusUnauthorized {
		t.Errorf("POST /v1/try without a token = %d; want 401", code)
	}
	var rep try.Report
	if code := adminCall(t, http.MethodPost, addr+"/v1/try", token, req, &rep); code != http.StatusOK {
		t.Fatalf("POST /v1/try = %d", code)
	}
	if rep.Events != 3 || !rep.Against || len(rep.Malformed) != 1 || rep.Malformed[0].Line != 2 || rep.Regressions != 0 {
		t.Errorf("report: %d events, against %v, malformed %+v, regressions %d; want 3, true, line 2, 0",
			rep.Events, rep.Against, rep.Malformed, rep.Regressions)
	}
	changes := map[string]string{}
	for _, res := range rep.Results {
		for _, c := range res.Changes {
			changes[res.EntityID] += c.Change
		}
	}
	if fmt.Sprint(changes) != "map[1:removed 2:changed]" {
		t.Errorf("changes by entity %v; want 1 removed (total 15), 2 changed (total 25)", changes)
	}
	mu.Lock()
	if hits != 0 {
		t.Errorf("the webhook endpoint got %d requests; want none", hits)
	}
	mu.Unlock()

	var e struct {
		Error string `json:"error"`
	}
	bad := TryRequest{Config: req.Config + "\n[observers.big.bogus]\nx = 1\n", Events: req.Events}
	if code := adminCall(t, http.MethodPost, addr+"/v1/try", token, bad, &e); code != http.StatusBadRequest ||
		!strings.HasPrefix(e.Error, "config: ") || !strings.Contains(e.Error, "observers.big.bogus") {
		t.Errorf("POST /v1/try with an unknown key = %d %q; want 400 naming config and observers.big.bogus", code, e.Error)
	}
	if code := adminCall(t, http.MethodPost, addr+"/v1/try", token, TryRequest{Events: req.Events}, &e); code != http.StatusBadRequest {
		t.Errorf("POST /v1/try without a config = %d; want 400", code)
	}
	// A variable the running config's actions do not name is not read:
	// the admin token's own variable, here, set in this process.
	adminEnv := r.cfg.HTTP.AdminTokenEnv
	if v, ok := os.LookupEnv(adminEnv); !ok || v != token {
		t.Fatalf("the admin token's variable %q is not set to the token", adminEnv)
	}
	leak := TryRequest{Config: fmt.Sprintf(`
[observers.big]
entity = "Order"
actions = [{ type = "webhook", url = "%s/hook", allow_private = true, secret_env = "%s" }]
`, hook.URL, adminEnv), Events: req.Events}
	if code := adminCall(t, http.MethodPost, addr+"/v1/try", token, leak, &e); code != http.StatusBadRequest ||
		!strings.Contains(e.Error, "observers.big.actions[0].secret_env: environment variable "+adminEnv+": POST /v1/try reads only") {
		t.Errorf("POST /v1/try naming the admin token's variable = %d %q; want 400 naming the key", code, e.Error)
	}
}
