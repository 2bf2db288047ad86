package security_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/internal/e2e"
	"github.com/millrace/millrace/internal/testenv"
)

func TestMain(m *testing.M) { e2e.Main(m) }

const wait = time.Minute

func random(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// TestNoSecretLeaks runs each topology with known secrets: an ingest
// token, the admin token, a webhook signing secret, a PostgreSQL
// password in every database URL, an SMTP password. It sends refused
// and accepted requests, makes an email and a SQL action fail into the
// dead-letter store, and then looks for every secret (and for the wrong
// token a client presented) in `millrace config`, the process's logs,
// the answers of refused requests, the dead-letter records through the
// API and the CLI, and /metrics. None may hold any of them.
func TestNoSecretLeaks(t *testing.T) {
	for _, topology := range e2e.Topologies() {
		t.Run(topology, func(t *testing.T) {
			t.Parallel()
			recv := e2e.NewReceiver(t)
			ingestToken, wrongToken := random("ingest-"), random("presented-")
			dbPassword, smtpPassword := random("dbpw"), random("smtppw")
			dbURL := "postgres://postgres:" + dbPassword + "@" + postgresHostPort(t) + "/test"
			r := e2e.NewRig(t, topology, e2e.Options{
				Receiver: recv,
				LogLevel: "debug",
				HTTP: map[string]any{"ingest_tokens": []map[string]any{
					{"name": "shop", "token_env": "MILLRACE_SEC_INGEST_TOKEN", "entity_types": []string{"Order"}},
				}},
				Tables: map[string]map[string]any{
					"smtp": {"host": "127.0.0.1", "port": testenv.FreePort(t), "from": "millrace@example.com", "tls": "none",
						"timeout": "2s", "username_env": "MILLRACE_SEC_SMTP_USER", "password_env": "MILLRACE_SEC_SMTP_PASSWORD"},
					"databases": {"audit": map[string]any{"url_env": "MILLRACE_SEC_AUDIT_DB_URL"}},
				},
				Env: []string{
					"MILLRACE_SEC_INGEST_TOKEN=" + ingestToken,
					"MILLRACE_SEC_SMTP_USER=millrace",
					"MILLRACE_SEC_SMTP_PASSWORD=" + smtpPassword,
					"MILLRACE_SEC_AUDIT_DB_URL=" + dbURL,
				},
				PostgresPassword: dbPassword,
				Observers: map[string]e2e.Observer{
					"hook": {Actions: []map[string]any{recv.Action("hook", nil)}},
					"mail": {Retry: map[string]any{"max_attempts": 1}, Actions: []map[string]any{{
						"type": "email", "to": []string{"ops@example.com"}, "subject": "order {{ .entity_id }}", "body": "changed"}}},
					"audit": {Retry: map[string]any{"max_attempts": 1}, Actions: []map[string]any{{
						"type": "sql", "database": "audit", "function": "millrace_no_such_function"}}},
				},
			})
			if r.IngestToken != ingestToken {
				t.Fatalf("the rig sends ingest token %q; want the test's", r.IngestToken)
			}
			r.Start()
			ctx, cancel := context.WithTimeout(context.Background(), 2*wait)
			defer cancel()
			secrets := map[string]string{
				"ingest token": ingestToken, "admin token": r.AdminToken, "webhook secret": recv.Secret(),
				"webhook key": strings.TrimPrefix(recv.Secret(), "whsec_"), "database password": dbPassword,
				"smtp password": smtpPassword, "presented wrong token": wrongToken,
			}
			var seen []string // everything the process printed, answered or stored

			ev := &event.Event{ID: uuid.NewString(), Type: event.Insert, Entity: "Order", EntityID: "7",
				Data: map[string]any{"id": 7, "status": "new", "n": 0}, Timestamp: time.Now().UTC()}
			body, _ := json.Marshal([]*event.Event{ev})
			for _, c := range []struct {
				name   string
				h      http.Header
				body   []byte
				status int
			}{
				{"no token", http.Header{}, body, 401},
				{"wrong token", http.Header{"Authorization": {"Bearer " + wrongToken}}, body, 401},
				{"entity not allowed", http.Header{"Authorization": {"Bearer " + ingestToken}},
					[]byte(`{"id":"` + uuid.NewString() + `","event_type":"INSERT","entity_type":"Invoice","entity_id":"1","data":{}}`), 403},
			} {
				status, answer, err := r.PostWith(ctx, "/v1/events", c.body, c.h)
				if err != nil || status != c.status {
					t.Errorf("%s: %d %s %v; want %d", c.name, status, answer, err, c.status)
				}
				seen = append(seen, answer)
			}
			if recv.Count("hook") != 0 {
				t.Errorf("refused requests were delivered: %d", recv.Count("hook"))
			}
			if err := r.IngestRetry(ctx, ev); err != nil {
				t.Fatal(err)
			}
			recv.Wait(t, wait, "the accepted event", func() bool { return recv.Count("hook") >= 1 })
			dls := r.WaitDeadLetters(t, wait, "the email and SQL failures", func(d []e2e.DeadLetter) bool { return len(d) >= 2 })
			for _, d := range dls {
				full := r.DeadLetter(t, d.ID)
				b, _ := json.Marshal(full)
				seen = append(seen, string(b))
				_, out, errOut := r.CLI(t, "dlq", "show", d.ID)
				seen = append(seen, out, errOut)
			}
			_, out, errOut := r.CLI(t, "dlq", "list")
			seen = append(seen, out, errOut)
			seen = append(seen, get(t, r.URL("/metrics")))

			cmd := exec.Command(e2e.Binary(t), "config", "-c", r.Config)
			cmd.Env = r.Env
			printed, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("millrace config: %v %s", err, printed)
			}
			if !strings.Contains(string(printed), "MILLRACE_SEC_INGEST_TOKEN") {
				t.Errorf("millrace config does not show the ingest token's variable:\n%s", printed)
			}
			seen = append(seen, string(printed))

			if code := r.Proc.Terminate(e2e.ShutdownWait()); code != 0 {
				t.Errorf("millrace exited with %d after SIGTERM", code)
			}
			logs := r.Proc.Logs()
			for _, l := range logs {
				seen = append(seen, l.Raw)
			}
			if n := r.Proc.CountLogs(func(l e2e.LogLine) bool {
				return l.Msg == "ingest: request refused" && l.Attrs["ingest_token"] == "unknown"
			}); n != 2 {
				t.Errorf("%d log lines for the refused 401s; want 2", n)
			}
			all := strings.Join(seen, "\n")
			for what, secret := range secrets {
				if i := strings.Index(all, secret); i >= 0 {
					t.Errorf("the %s appears in what millrace printed, logged, answered or stored: …%s…",
						what, all[max(0, i-120):min(len(all), i+len(secret)+40)])
				}
			}
			t.Logf("%s: %d log lines, %d dead letters, config, metrics and answers searched for %d secrets",
				r.Describe(), len(logs), len(dls), len(secrets))
		})
	}
}

// postgresHostPort is the host:port of the test PostgreSQL server.
func postgresHostPort(t *testing.T) string {
	t.Helper()
	u := testenv.PostgresURL()
	_, rest, ok := strings.Cut(u, "@")
	if !ok {
		_, rest, _ = strings.Cut(u, "://")
	}
	hostPort, _, _ := strings.Cut(rest, "/")
	if _, err := strconv.Atoi(hostPort[strings.LastIndex(hostPort, ":")+1:]); err != nil {
		t.Fatalf("cannot read host:port from the PostgreSQL URL")
	}
	return hostPort
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
