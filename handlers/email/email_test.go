package email_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/email"
	"github.com/millrace/millrace/internal/testenv"
)

// smtpServer is a small SMTP server: it accepts every command it knows,
// records what it receives, and answers RCPT TO for chosen addresses with
// a chosen reply.
type smtpServer struct {
	ln        net.Listener
	rcptReply map[string]string // address -> reply line, e.g. "550 5.1.1 no such user"
	stall     bool              // greet, then never answer

	mu   sync.Mutex
	msgs []received
	wg   sync.WaitGroup
}

type received struct {
	auth  string // "user:password" from AUTH PLAIN
	from  string
	rcpts []string
	data  []byte
}

func startSMTP(t *testing.T, rcptReply map[string]string, stall bool) *smtpServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &smtpServer{ln: ln, rcptReply: rcptReply, stall: stall}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.session(c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *smtpServer) port() int { return s.ln.Addr().(*net.TCPAddr).Port }

func (s *smtpServer) received() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

func (s *smtpServer) session(c net.Conn) {
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	tp := textproto.NewConn(c)
	if s.stall {
		_, _ = io.Copy(io.Discard, c)
		return
	}
	reply := func(lines ...string) bool {
		for _, l := range lines {
			if err := tp.PrintfLine("%s", l); err != nil {
				return false
			}
		}
		return true
	}
	reply("220 localhost ESMTP test")
	var cur received
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			reply("250-localhost", "250-8BITMIME", "250 AUTH PLAIN")
		case "HELO", "NOOP":
			reply("250 ok")
		case "AUTH":
			mech, resp, _ := strings.Cut(arg, " ")
			if strings.ToUpper(mech) != "PLAIN" {
				reply("504 unsupported mechanism")
				continue
			}
			if resp == "" {
				reply("334 ")
				if resp, err = tp.ReadLine(); err != nil {
					return
				}
			}
			b, err := base64.StdEncoding.DecodeString(resp)
			parts := strings.Split(string(b), "\x00")
			if err != nil || len(parts) != 3 {
				reply("501 bad AUTH PLAIN response")
				continue
			}
			cur.auth = parts[1] + ":" + parts[2]
			reply("235 2.7.0 authenticated")
		case "MAIL":
			cur.from = angle(arg)
			cur.rcpts, cur.data = nil, nil
			reply("250 2.1.0 ok")
		case "RCPT":
			addr := angle(arg)
			if r, ok := s.rcptReply[addr]; ok {
				reply(r)
				continue
			}
			cur.rcpts = append(cur.rcpts, addr)
			reply("250 2.1.5 ok")
		case "DATA":
			reply("354 go ahead")
			data, err := tp.ReadDotBytes()
			if err != nil {
				return
			}
			cur.data = data
			s.mu.Lock()
			s.msgs = append(s.msgs, cur)
			s.mu.Unlock()
			cur = received{auth: cur.auth}
			reply("250 2.0.0 queued")
		case "RSET":
			cur = received{auth: cur.auth}
			reply("250 ok")
		case "QUIT":
			reply("221 bye")
			return
		default:
			reply("502 unknown command")
		}
	}
}

// angle returns the address of "FROM:<a@b> SIZE=10" or "TO:<a@b>".
func angle(arg string) string {
	i, j := strings.IndexByte(arg, '<'), strings.IndexByte(arg, '>')
	if i < 0 || j < i {
		return arg
	}
	return arg[i+1 : j]
}

// parsed is a received message decoded the way a mail reader would.
type parsed struct {
	header      mail.Header
	subject     string
	body        string
	contentType string
}

func parse(t *testing.T, data []byte) parsed {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("the server received an unreadable message: %v\n%s", err, data)
	}
	var dec mime.WordDecoder
	subject, err := dec.DecodeHeader(m.Header.Get("Subject"))
	if err != nil {
		t.Fatal(err)
	}
	var body io.Reader = m.Body
	switch strings.ToLower(m.Header.Get("Content-Transfer-Encoding")) {
	case "quoted-printable":
		body = quotedprintable.NewReader(body)
	case "base64":
		body = base64.NewDecoder(base64.StdEncoding, body)
	}
	b, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	ct, _, _ := mime.ParseMediaType(m.Header.Get("Content-Type"))
	return parsed{header: m.Header, subject: subject, body: string(b), contentType: ct}
}

func smtpConfig(port int) *config.Config {
	cfg := config.Default()
	cfg.SMTP.Host = "127.0.0.1"
	cfg.SMTP.Port = port
	cfg.SMTP.From = "millrace@example.com"
	cfg.SMTP.TLS = "none"
	cfg.SMTP.Timeout = config.Duration(10 * time.Second)
	return cfg
}

func build(t *testing.T, cfg *config.Config, raw config.Action) handlers.Action {
	t.Helper()
	reg := handlers.NewRegistry()
	if err := email.Register(reg); err != nil {
		t.Fatal(err)
	}
	raw["type"] = "email"
	spec, err := reg.Decode("observers.o.actions[0]", raw)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	a, err := reg.Build(context.Background(), spec, handlers.Deps{Config: cfg, ActionHash: spec.Hash})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return a
}

func order(id string) *event.Event {
	return &event.Event{
		ID: id, Type: event.Update, Entity: "Order", EntityID: "1001",
		Data: map[string]any{"email": "Ann <ann@example.com>", "name": "Ann", "status": "shipped", "total": 99.5},
	}
}

const evID = "0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01"

func TestSend(t *testing.T) {
	srv := startSMTP(t, nil, false)
	t.Setenv("MILLRACE_TEST_SMTP_USER", "mailer")
	t.Setenv("MILLRACE_TEST_SMTP_PASSWORD", "s3cret")
	cfg := smtpConfig(srv.port())
	cfg.SMTP.UsernameEnv = "MILLRACE_TEST_SMTP_USER"
	cfg.SMTP.PasswordEnv = "MILLRACE_TEST_SMTP_PASSWORD"
	a := build(t, cfg, config.Action{
		"to":      []any{"{{.data.email}}", `ops@example.com, "Sales, EU" <sales@example.com>`, "{{.data.missing}}"},
		"cc":      []any{"audit@example.com"},
		"subject": "Order {{.entity_id}} is {{.data.status}}",
		"body":    "Hello {{.data.name}},\nyour order of {{.data.total}} EUR is {{.data.status}}.\n",
	})
	ev := order(evID)
	for range 2 {
		if err := a.Execute(context.Background(), ev); err != nil {
			t.Fatalf("Execute: %v", err)
		}
	}

	msgs := srv.received()
	if len(msgs) != 2 {
		t.Fatalf("the server received %d messages, want 2", len(msgs))
	}
	got := msgs[0]
	if got.auth != "mailer:s3cret" {
		t.Errorf("AUTH PLAIN credentials = %q, want mailer:s3cret", got.auth)
	}
	if got.from != "millrace@example.com" {
		t.Errorf("MAIL FROM = %q, want millrace@example.com", got.from)
	}
	wantRcpts := []string{"ann@example.com", "ops@example.com", "sales@example.com", "audit@example.com"}
	if r := slices.Sorted(slices.Values(got.rcpts)); !slices.Equal(r, slices.Sorted(slices.Values(wantRcpts))) {
		t.Errorf("RCPT TO = %v, want %v", got.rcpts, wantRcpts)
	}
	p := parse(t, got.data)
	if p.subject != "Order 1001 is shipped" {
		t.Errorf("Subject = %q, want %q", p.subject, "Order 1001 is shipped")
	}
	if want := "Hello Ann,\nyour order of 99.5 EUR is shipped.\n"; strings.ReplaceAll(p.body, "\r\n", "\n") != want {
		t.Errorf("body = %q, want %q", p.body, want)
	}
	if p.contentType != "text/plain" {
		t.Errorf("Content-Type = %q, want text/plain", p.contentType)
	}
	for _, h := range []struct{ name, want string }{
		{"To", "ann@example.com"}, {"To", "sales@example.com"}, {"Cc", "audit@example.com"}, {"From", "millrace@example.com"},
	} {
		if v := p.header.Get(h.name); !strings.Contains(v, h.want) {
			t.Errorf("%s header = %q, want it to contain %q", h.name, v, h.want)
		}
	}
	id := p.header.Get("Message-Id")
	if !strings.HasSuffix(id, "@example.com>") {
		t.Errorf("Message-ID = %q, want <...@example.com>", id)
	}
	if id2 := parse(t, msgs[1].data).header.Get("Message-Id"); id2 != id {
		t.Errorf("Message-ID of the retry = %q, want the first one's %q", id2, id)
	}
}

func TestSendHTMLWithoutCredentials(t *testing.T) {
	t.Parallel()
	srv := startSMTP(t, nil, false)
	a := build(t, smtpConfig(srv.port()), config.Action{
		"to":           []any{"ops@example.com"},
		"subject":      "line one\r\nBcc: evil@example.com",
		"body":         "<p>Order <b>{{.entity_id}}</b> for {{.data.name}}</p>",
		"content_type": "text/html",
	})
	ev := order(evID)
	ev.Data["name"] = `<a href="https://evil.example">Ann</a> & co`
	if err := a.Execute(context.Background(), ev); err != nil {
		t.Fatalf("Execute: %v", err)
	}
	msgs := srv.received()
	if len(msgs) != 1 {
		t.Fatalf("the server received %d messages, want 1", len(msgs))
	}
	if msgs[0].auth != "" {
		t.Errorf("AUTH was sent without credentials: %q", msgs[0].auth)
	}
	p := parse(t, msgs[0].data)
	want := `<p>Order <b>1001</b> for &lt;a href=&#34;https://evil.example&#34;&gt;Ann&lt;/a&gt; &amp; co</p>`
	if p.contentType != "text/html" || strings.TrimRight(p.body, "\r\n") != want {
		t.Errorf("Content-Type %q, body %q; want text/html with body %q", p.contentType, p.body, want)
	}
	if p.header.Get("Bcc") != "" || p.subject != "line one Bcc: evil@example.com" {
		t.Errorf("a line break in the subject made a header: Subject %q, Bcc %q", p.subject, p.header.Get("Bcc"))
	}
	if !slices.Equal(msgs[0].rcpts, []string{"ops@example.com"}) {
		t.Errorf("RCPT TO = %v, want only ops@example.com", msgs[0].rcpts)
	}
}

func TestErrorClassification(t *testing.T) {
	t.Parallel()
	srv := startSMTP(t, map[string]string{
		"gone@example.com": "550 5.1.1 no such user",
		"busy@example.com": "451 4.3.0 try again later",
	}, false)
	cases := []struct {
		name      string
		to        string
		permanent bool
	}{
		{"550 is permanent", "gone@example.com", true},
		{"451 is transient", "busy@example.com", false},
		{"a rendered value that is not an address is permanent", "{{.data.name}}", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := build(t, smtpConfig(srv.port()), config.Action{"to": []any{c.to}, "body": "x"})
			err := a.Execute(context.Background(), order(evID))
			if err == nil {
				t.Fatal("Execute succeeded, want an error")
			}
			if handlers.IsPermanent(err) != c.permanent {
				t.Errorf("IsPermanent(%v) = %v, want %v", err, handlers.IsPermanent(err), c.permanent)
			}
		})
	}

	t.Run("connection refused is transient", func(t *testing.T) {
		a := build(t, smtpConfig(testenv.FreePort(t)), config.Action{"to": []any{"ops@example.com"}, "body": "x"})
		err := a.Execute(context.Background(), order(evID))
		if err == nil || handlers.IsPermanent(err) {
			t.Errorf("Execute = %v, want a transient error", err)
		}
	})
	if n := len(srv.received()); n != 0 {
		t.Errorf("the server received %d messages, want none", n)
	}
}

func TestExecuteHonoursContext(t *testing.T) {
	t.Parallel()
	srv := startSMTP(t, nil, true)
	cfg := smtpConfig(srv.port())
	cfg.SMTP.Timeout = config.Duration(time.Minute)
	a := build(t, cfg, config.Action{"to": []any{"ops@example.com"}, "body": "x"})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := a.Execute(ctx, order(evID))
	if err == nil || handlers.IsPermanent(err) {
		t.Errorf("Execute on a stalled server = %v, want a transient error", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Execute took %s after its context ended, want it to return soon after 300ms", took)
	}
}

func TestBuildErrors(t *testing.T) {
	reg := handlers.NewRegistry()
	if err := email.Register(reg); err != nil {
		t.Fatal(err)
	}
	spec, err := reg.Decode("observers.o.actions[0]", config.Action{"type": "email", "to": []any{"a@example.com"}, "body": "x"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		cfg  func() *config.Config
		want string
	}{
		{"no config", func() *config.Config { return nil }, "smtp.host"},
		{"no smtp section", config.Default, "smtp.host"},
		{"unset credential variable", func() *config.Config {
			c := smtpConfig(25)
			c.SMTP.PasswordEnv = "MILLRACE_TEST_SMTP_UNSET_PASSWORD"
			return c
		}, "MILLRACE_TEST_SMTP_UNSET_PASSWORD"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := reg.Build(context.Background(), spec, handlers.Deps{Config: c.cfg()})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Build = %v, want an error naming %s", err, c.want)
			}
			if err != nil && !strings.Contains(err.Error(), "observers.o.actions[0]") {
				t.Errorf("Build = %v, want the action's path in it", err)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	reg := handlers.NewRegistry()
	if err := email.Register(reg); err != nil {
		t.Fatal(err)
	}
	valid := func() config.Action {
		return config.Action{"type": "email", "to": []any{"{{.data.email}}"}, "body": "hi"}
	}
	if _, err := reg.Decode("observers.o.actions[0]", valid()); err != nil {
		t.Fatalf("a valid section: %v", err)
	}
	const p = "observers.o.actions[0]."
	cases := []struct {
		name   string
		change func(config.Action)
		want   string
	}{
		{"no recipient", func(a config.Action) { delete(a, "to") }, p + "to: at least one recipient"},
		{"to template does not parse", func(a config.Action) { a["to"] = []any{"a@example.com", "{{.data.email"} }, p + "to[1]: template does not parse"},
		{"literal address is invalid", func(a config.Action) { a["to"] = []any{"not an address"} }, p + "to[0]:"},
		{"cc template does not parse", func(a config.Action) { a["cc"] = []any{"{{end}}"} }, p + "cc[0]: template does not parse"},
		{"subject template does not parse", func(a config.Action) { a["subject"] = "{{if}}" }, p + "subject: template does not parse"},
		{"body missing", func(a config.Action) { delete(a, "body") }, p + "body: is required"},
		{"body template does not parse", func(a config.Action) { a["body"] = "{{.x" }, p + "body: template does not parse"},
		{"content type", func(a config.Action) { a["content_type"] = "application/pdf" }, p + "content_type:"},
		{"to is not a list", func(a config.Action) { a["to"] = 3 }, p + "to: must be a list"},
		{"unknown key", func(a config.Action) { a["subjet"] = "x" }, p + "subjet: unknown key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := valid()
			c.change(a)
			_, err := reg.Decode("observers.o.actions[0]", a)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Decode = %v, want an error containing %q", err, c.want)
			}
		})
	}
}
