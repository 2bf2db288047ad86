package email

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"html"
	"log/slog"
	"net"
	"net/mail"
	"net/textproto"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	gomail "github.com/wneessen/go-mail"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

// Content types of the body.
const (
	TextPlain = "text/plain"
	TextHTML  = "text/html"
)

// Config is the email action's section. Every string is a template over
// the event.
type Config struct {
	// To lists the recipients; each entry renders to one address or a
	// comma-separated list of addresses. Required.
	To []string `koanf:"to"`
	// Cc lists the copy recipients, as To. Optional.
	Cc []string `koanf:"cc"`
	// Subject is the subject line. Default
	// "{{.event_type}} {{.entity_type}} {{.entity_id}}".
	Subject string `koanf:"subject"`
	// Body is the message text. Required. In a text/html body, values
	// from the event are HTML-escaped.
	Body string `koanf:"body"`
	// ContentType is text/plain (default) or text/html.
	ContentType string `koanf:"content_type"`
}

// SetDefaults fills the defaults.
func (c *Config) SetDefaults() {
	c.Subject = "{{.event_type}} {{.entity_type}} {{.entity_id}}"
	c.ContentType = TextPlain
}

// Validate compiles every template and checks the addresses that hold no
// template action.
func (c Config) Validate() error {
	var errs []error
	if len(c.To) == 0 {
		errs = append(errs, config.Errorf("to", "at least one recipient is required"))
	}
	_, err := compileList("to", c.To)
	errs = append(errs, err)
	_, err = compileList("cc", c.Cc)
	errs = append(errs, err)
	if _, err := handlers.CompileTemplate("subject", c.Subject); err != nil {
		errs = append(errs, config.Errorf("subject", "%v", err))
	}
	if strings.TrimSpace(c.Body) == "" {
		errs = append(errs, config.Errorf("body", "is required"))
	} else if _, err := handlers.CompileTemplate("body", c.Body); err != nil {
		errs = append(errs, config.Errorf("body", "%v", err))
	}
	if c.ContentType != TextPlain && c.ContentType != TextHTML {
		errs = append(errs, config.Errorf("content_type", "%q is not one of %s, %s", c.ContentType, TextPlain, TextHTML))
	}
	return errors.Join(errs...)
}

var _ handlers.ConfigChecker = Config{}

// CheckConfig checks that the file has the [smtp] section the action
// sends through.
func (c Config) CheckConfig(cfg *config.Config, _ config.Features) error {
	return checkSMTP(cfg.SMTP)
}

// checkSMTP checks what the action needs of the [smtp] section.
func checkSMTP(s config.SMTP) error {
	switch {
	case s.Host == "":
		return errors.New("smtp.host is not set: the email action needs an [smtp] section with host and from")
	case s.From == "":
		return errors.New("smtp.from is not set")
	}
	if _, err := mail.ParseAddress(s.From); err != nil {
		return fmt.Errorf("smtp.from: %q is not an email address: %w", s.From, err)
	}
	return nil
}

// compileList compiles a list of address templates; a template without
// actions must already be a valid address list.
func compileList(key string, srcs []string) ([]addrTemplate, error) {
	var errs []error
	out := make([]addrTemplate, 0, len(srcs))
	for i, src := range srcs {
		path := config.Index(key, i)
		t, err := handlers.CompileTemplate(path, src)
		if err != nil {
			errs = append(errs, config.Errorf(path, "%v", err))
			continue
		}
		if !strings.Contains(src, "{{") {
			if _, err := parseAddresses(src); err != nil {
				errs = append(errs, config.Errorf(path, "%v", err))
			}
		}
		out = append(out, addrTemplate{path: path, t: t})
	}
	return out, errors.Join(errs...)
}

// addrTemplate is one entry of to or cc, with its key path for errors.
type addrTemplate struct {
	path string
	t    *handlers.Template
}

// parseAddresses reads a rendered recipient entry: one address or a
// comma-separated list (RFC 5322, so a quoted name may hold a comma).
// An empty entry holds no address.
func parseAddresses(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	list, err := mail.ParseAddressList(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not an email address or a list of them: %w", s, err)
	}
	out := make([]string, 0, len(list))
	for _, a := range list {
		out = append(out, a.String())
	}
	return out, nil
}

// server is what the action takes from the [smtp] section.
type server struct {
	host, from, tls    string
	port               int
	username, password string
	timeout            time.Duration
}

// Email is the email action.
type Email struct {
	srv         server
	to, cc      []addrTemplate
	subject     *handlers.Template
	body        *handlers.Template
	contentType gomail.ContentType
	hash        string
	logger      *slog.Logger
}

var (
	_ handlers.Action   = (*Email)(nil)
	_ handlers.Renderer = (*Email)(nil)
)

// New builds the action from c and the [smtp] section of deps.Config.
// It reads the credentials named by smtp.username_env and
// smtp.password_env; it does not connect.
func New(_ context.Context, c Config, deps handlers.Deps) (handlers.Action, error) {
	var s config.SMTP
	if deps.Config != nil {
		s = deps.Config.SMTP
	}
	if err := checkSMTP(s); err != nil {
		return nil, fmt.Errorf("email: %w", err)
	}
	srv := server{host: s.Host, port: s.Port, from: s.From, tls: s.TLS, timeout: s.Timeout.D()}
	if srv.port == 0 {
		srv.port = 587
	}
	if srv.tls == "" {
		srv.tls = "starttls"
	}
	if srv.timeout <= 0 {
		srv.timeout = 30 * time.Second
	}
	var err error
	if srv.username, err = config.Secret("", s.UsernameEnv); err != nil {
		return nil, fmt.Errorf("email: smtp.username_env: %w", err)
	}
	if srv.password, err = config.Secret("", s.PasswordEnv); err != nil {
		return nil, fmt.Errorf("email: smtp.password_env: %w", err)
	}

	e := &Email{srv: srv, hash: deps.ActionHash, logger: deps.Logger, contentType: gomail.TypeTextPlain}
	if c.ContentType == TextHTML {
		e.contentType = gomail.TypeTextHTML
	}
	if e.logger == nil {
		e.logger = slog.New(slog.DiscardHandler)
	}
	if e.to, err = compileList("to", c.To); err != nil {
		return nil, err
	}
	if e.cc, err = compileList("cc", c.Cc); err != nil {
		return nil, err
	}
	if e.subject, err = handlers.CompileTemplate("subject", c.Subject); err != nil {
		return nil, err
	}
	if e.body, err = handlers.CompileTemplate("body", c.Body); err != nil {
		return nil, err
	}
	// Check the client options once, so a bad combination fails the build.
	if _, err := e.client(context.Background()); err != nil {
		return nil, fmt.Errorf("email: %w", err)
	}
	return e, nil
}

// Register adds the "email" type to r.
func Register(r *handlers.Registry) error { return handlers.Register(r, "email", New) }

// messageIDNamespace makes Message-IDs from the event id and the action
// hash, so that every retry of one event's mail carries the same id and a
// receiver can recognise a repeat.
var messageIDNamespace = uuid.MustParse("0e4f2f3c-6b1e-4f57-9d8a-54c1b9b0a6e2")

// BreakerKey names the SMTP server, smtp://host:port, so that every email
// action shares its circuit breaker.
func (e *Email) BreakerKey() string {
	return handlers.ServerEndpoint("smtp", e.srv.host, e.srv.port, "")
}

// Execute renders the message and sends it.
func (e *Email) Execute(ctx context.Context, ev *event.Event) error {
	msg, rcpts, err := e.message(ev)
	if err != nil {
		return handlers.Permanent(fmt.Errorf("email: %w", err))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	client, err := e.client(ctx)
	if err != nil {
		return handlers.Permanent(fmt.Errorf("email: %w", err))
	}
	start := time.Now()
	if err := client.DialAndSendWithContext(ctx, msg); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("email: send: %w (%w)", ctxErr, err)
		}
		return classify(err)
	}
	e.logger.DebugContext(ctx, "email sent", "event_id", ev.ID, "recipients", rcpts,
		"took", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// Render returns the message Execute would send for ev: its headers
// (Date left out, since it is the time of sending) and its body.
func (e *Email) Render(_ context.Context, ev *event.Event) (handlers.Effect, error) {
	msg, _, err := e.message(ev)
	if err != nil {
		return handlers.Effect{}, handlers.Permanent(fmt.Errorf("email: %w", err))
	}
	eff := handlers.Effect{
		Kind: "email", Method: "SMTP", Target: e.BreakerKey(),
		Headers: map[string]string{
			"From":       strings.Join(msg.GetFromString(), ", "),
			"To":         strings.Join(msg.GetToString(), ", "),
			"Subject":    strings.Join(msg.GetGenHeader(gomail.HeaderSubject), ", "),
			"Message-Id": msg.GetMessageID(),
		},
	}
	if cc := msg.GetCcString(); len(cc) > 0 {
		eff.Headers["Cc"] = strings.Join(cc, ", ")
	}
	for _, p := range msg.GetParts() {
		eff.Headers["Content-Type"] = string(p.GetContentType())
		b, err := p.GetContent()
		if err != nil {
			return handlers.Effect{}, handlers.Permanent(fmt.Errorf("email: body: %w", err))
		}
		eff.Body += string(b)
	}
	return eff, nil
}

// message renders the templates into a message.
func (e *Email) message(ev *event.Event) (*gomail.Msg, int, error) {
	to, err := render(e.to, ev)
	if err != nil {
		return nil, 0, err
	}
	if len(to) == 0 {
		return nil, 0, errors.New("to: the recipients render to no address")
	}
	cc, err := render(e.cc, ev)
	if err != nil {
		return nil, 0, err
	}
	subject, err := e.subject.Render(ev)
	if err != nil {
		return nil, 0, fmt.Errorf("subject: %w", err)
	}
	bodyEv := ev
	if e.contentType == gomail.TypeTextHTML {
		bodyEv = htmlEscaped(ev)
	}
	body, err := e.body.Render(bodyEv)
	if err != nil {
		return nil, 0, fmt.Errorf("body: %w", err)
	}
	m := gomail.NewMsg()
	if err := m.From(e.srv.from); err != nil {
		return nil, 0, fmt.Errorf("from: %w", err)
	}
	if err := m.To(to...); err != nil {
		return nil, 0, fmt.Errorf("to: %w", err)
	}
	if len(cc) > 0 {
		if err := m.Cc(cc...); err != nil {
			return nil, 0, fmt.Errorf("cc: %w", err)
		}
	}
	// A line break in a header value would start a new header.
	m.Subject(oneLine.Replace(subject))
	m.SetBodyString(e.contentType, body)
	m.SetDate()
	id := uuid.NewSHA1(messageIDNamespace, []byte(ev.ID+"\x00"+e.hash))
	m.SetMessageIDWithValue(id.String() + "@" + domain(e.srv.from))
	return m, len(to) + len(cc), nil
}

// htmlEscaped returns a copy of ev whose strings, at any depth, are
// HTML-escaped, so that values from the event show as text in an HTML
// body and cannot add markup. The template's own text is left as is.
func htmlEscaped(ev *event.Event) *event.Event {
	c := *ev
	c.ID, c.Entity, c.EntityID = html.EscapeString(ev.ID), html.EscapeString(ev.Entity), html.EscapeString(ev.EntityID)
	c.Type = event.Type(html.EscapeString(string(ev.Type)))
	c.UserID, c.TenantID, c.Source = html.EscapeString(ev.UserID), html.EscapeString(ev.TenantID), html.EscapeString(ev.Source)
	if ev.Data != nil {
		c.Data = htmlValue(ev.Data).(map[string]any)
	}
	if ev.Changes != nil {
		c.Changes = make(map[string]event.Change, len(ev.Changes))
		for k, ch := range ev.Changes {
			c.Changes[k] = event.Change{Old: htmlValue(ch.Old), New: htmlValue(ch.New)}
		}
	}
	return &c
}

func htmlValue(v any) any {
	switch x := v.(type) {
	case string:
		return html.EscapeString(x)
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = htmlValue(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = htmlValue(e)
		}
		return l
	}
	return v
}

var oneLine = strings.NewReplacer("\r\n", " ", "\r", " ", "\n", " ")

func render(ts []addrTemplate, ev *event.Event) ([]string, error) {
	var out []string
	for _, t := range ts {
		s, err := t.t.Render(ev)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t.path, err)
		}
		addrs, err := parseAddresses(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t.path, err)
		}
		out = append(out, addrs...)
	}
	return out, nil
}

func domain(from string) string {
	if a, err := mail.ParseAddress(from); err == nil {
		if _, d, ok := strings.Cut(a.Address, "@"); ok && d != "" {
			return d
		}
	}
	return "millrace"
}

// client returns a new SMTP client for one send. Its connection is closed
// when ctx ends, so a cancelled action does not wait for the SMTP
// timeout.
//
// The dialer is ours in every mode: go-mail's own dialer does not watch
// the send's context once connected.
func (e *Email) client(ctx context.Context) (*gomail.Client, error) {
	timeout := e.srv.timeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, max(time.Until(dl), time.Millisecond))
	}
	opts := []gomail.Option{
		gomail.WithPort(e.srv.port),
		gomail.WithTimeout(timeout),
		gomail.WithDialContextFunc(e.dialer(ctx)),
	}
	// Mechanisms in order of preference; PLAIN and LOGIN send the password
	// as is, so they are used only over TLS unless tls is "none".
	mechs := []gomail.SMTPAuthType{gomail.SMTPAuthSCRAMSHA256, gomail.SMTPAuthSCRAMSHA1, gomail.SMTPAuthCramMD5,
		gomail.SMTPAuthPlain, gomail.SMTPAuthLogin}
	switch e.srv.tls {
	case "starttls":
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSMandatory),
			gomail.WithTLSConfig(&tls.Config{ServerName: e.srv.host, MinVersion: tls.VersionTLS12}))
	case "tls":
		// The dialer does the TLS handshake; there is no STARTTLS after it.
		opts = append(opts, gomail.WithTLSPolicy(gomail.NoTLS))
	case "none":
		opts = append(opts, gomail.WithTLSPolicy(gomail.NoTLS))
		mechs = []gomail.SMTPAuthType{gomail.SMTPAuthSCRAMSHA256, gomail.SMTPAuthSCRAMSHA1, gomail.SMTPAuthCramMD5,
			gomail.SMTPAuthPlainNoEnc, gomail.SMTPAuthLoginNoEnc}
	default:
		return nil, fmt.Errorf("smtp.tls: %q is not one of starttls, tls, none", e.srv.tls)
	}
	if e.srv.username != "" || e.srv.password != "" {
		opts = append(opts, gomail.WithOpportunisticSMTPAuth(mechs...),
			gomail.WithUsername(e.srv.username), gomail.WithPassword(e.srv.password))
	}
	return gomail.NewClient(e.srv.host, opts...)
}

func (e *Email) dialer(sendCtx context.Context) gomail.DialContextFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		raw, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		conn := watch(sendCtx, raw)
		if e.srv.tls != "tls" {
			return conn, nil
		}
		// A *tls.Conn is returned as is: the SMTP client looks at its type
		// to know that the connection is encrypted.
		tc := tls.Client(conn, &tls.Config{ServerName: e.srv.host, MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = conn.Close()
			return nil, err
		}
		return tc, nil
	}
}

// watch closes conn when ctx ends, and stops watching when conn is closed.
func watch(ctx context.Context, conn net.Conn) net.Conn {
	w := &watchedConn{Conn: conn}
	w.stop = context.AfterFunc(ctx, func() { _ = conn.Close() })
	return w
}

type watchedConn struct {
	net.Conn
	once sync.Once
	stop func() bool
}

func (w *watchedConn) Close() error {
	w.once.Do(func() { w.stop() })
	return w.Conn.Close()
}

// classify turns a send error into a permanent or transient one: SMTP 5xx
// is permanent, 4xx and network failures are transient, and a message
// that go-mail refuses before talking to the server is permanent.
func classify(err error) error {
	err = fmt.Errorf("email: send: %w", err)
	code := 0
	var se *gomail.SendError
	var te *textproto.Error
	switch {
	case errors.As(err, &se):
		code = se.ErrorCode()
		if code == 0 {
			switch se.Reason {
			case gomail.ErrGetSender, gomail.ErrGetRcpts, gomail.ErrNoUnencoded:
				return handlers.Permanent(err)
			}
		}
	case errors.As(err, &te):
		code = te.Code
	}
	if code >= 500 && code < 600 {
		return handlers.Permanent(err)
	}
	return err
}
