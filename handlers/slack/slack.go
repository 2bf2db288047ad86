package slack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/webhook"
)

// Config is the slack action's section.
type Config struct {
	// URLEnv names the variable that holds the incoming-webhook URL
	// (https://hooks.slack.com/services/...). Required: the URL is a
	// credential.
	URLEnv string `koanf:"url_env"`
	// Text is the message, a template over the event. Default
	// "{{.event_type}} on {{.entity_type}} (ID: {{.entity_id}})".
	Text string `koanf:"text"`
	// Channel overrides the webhook's channel, a template; empty (the
	// default) keeps the channel the webhook was created for.
	Channel string `koanf:"channel"`
	// Timeout bounds one request. Default 10s.
	Timeout config.Duration `koanf:"timeout"`
	// AllowPrivate lets requests reach loopback and private addresses.
	// Default false; for development only.
	AllowPrivate bool `koanf:"allow_private"`
}

// DefaultText is the default of Config.Text.
const DefaultText = "{{.event_type}} on {{.entity_type}} (ID: {{.entity_id}})"

// SetDefaults fills the defaults.
func (c *Config) SetDefaults() {
	c.Text = DefaultText
	c.Timeout = config.Duration(webhook.DefaultTimeout)
}

// Validate checks every field and compiles the templates, without I/O.
func (c Config) Validate() error {
	var errs []error
	if c.URLEnv == "" {
		errs = append(errs, config.Errorf("url_env", "is required: the name of the variable that holds the incoming-webhook URL"))
	}
	if c.Text == "" {
		errs = append(errs, config.Errorf("text", "must not be empty"))
	} else if _, err := handlers.CompileTemplate("text", c.Text); err != nil {
		errs = append(errs, config.Errorf("text", "%v", err))
	}
	if c.Channel != "" {
		if _, err := handlers.CompileTemplate("channel", c.Channel); err != nil {
			errs = append(errs, config.Errorf("channel", "%v", err))
		}
	}
	if c.Timeout <= 0 {
		errs = append(errs, config.Errorf("timeout", "must be positive, got %s", c.Timeout))
	}
	return errors.Join(errs...)
}

// Slack is the slack action. It is safe for concurrent use; Close
// releases its idle connections.
type Slack struct {
	url     string
	urlEnv  string
	text    *handlers.Template
	channel *handlers.Template // nil: the webhook's own channel
	timeout time.Duration
	tr      *http.Transport
}

var (
	_ handlers.Action   = (*Slack)(nil)
	_ io.Closer         = (*Slack)(nil)
	_ handlers.Renderer = (*Slack)(nil)
)

// Register adds the "slack" type to r.
func Register(r *handlers.Registry) error { return handlers.Register(r, "slack", New) }

// New builds the action: it reads the URL from url_env and compiles the
// templates.
func New(_ context.Context, c Config, deps handlers.Deps) (handlers.Action, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	u, err := config.Secret("", c.URLEnv)
	if err != nil {
		return nil, fmt.Errorf("url_env: %w", err)
	}
	if p, err := url.Parse(u); err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
		// The error does not quote the URL: it holds the webhook's token.
		return nil, fmt.Errorf("url_env: the value of %s is not an absolute http or https URL", c.URLEnv)
	}
	s := &Slack{url: u, urlEnv: c.URLEnv, timeout: c.Timeout.D()}
	if s.text, err = handlers.CompileTemplate("text", c.Text); err != nil {
		return nil, fmt.Errorf("text: %w", err)
	}
	if c.Channel != "" {
		if s.channel, err = handlers.CompileTemplate("channel", c.Channel); err != nil {
			return nil, fmt.Errorf("channel: %w", err)
		}
	}
	s.tr = webhook.NewTransport(&webhook.Guard{AllowPrivate: c.AllowPrivate})
	if c.AllowPrivate && deps.Logger != nil {
		deps.Logger.Warn("slack: allow_private is on; requests may reach loopback and private addresses")
	}
	return s, nil
}

// message is the incoming-webhook payload.
type message struct {
	Text    string `json:"text"`
	Channel string `json:"channel,omitempty"`
}

// Execute posts the message for ev. Slack answers 200 on success; 429
// (with Retry-After), 408, 425, 5xx and network errors are transient;
// other answers (400 invalid_payload, 403, 404 channel_not_found, 410
// channel_is_archived) are permanent.
func (s *Slack) Execute(ctx context.Context, ev *event.Event) error {
	body, err := s.payload(ev)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return handlers.Permanent(errors.New("slack: the url is not valid"))
	}
	req.Header = requestHeader()
	if err := webhook.Do(s.tr, req); err != nil {
		return fmt.Errorf("slack: %w", err)
	}
	return nil
}

// Render returns the message Execute would post for ev. The URL, a
// credential, shows only its endpoint and the variable it came from.
func (s *Slack) Render(_ context.Context, ev *event.Event) (handlers.Effect, error) {
	body, err := s.payload(ev)
	if err != nil {
		return handlers.Effect{}, err
	}
	e := handlers.Effect{
		Kind: "slack", Method: http.MethodPost, Target: handlers.URLEndpoint(s.url) + "/… (" + s.urlEnv + ")",
		Headers: map[string]string{},
		Body:    string(body),
	}
	for k, v := range requestHeader() {
		e.Headers[k] = v[0]
	}
	return e, nil
}

// requestHeader returns the headers of a post, a new map each time: the
// transport may add to it.
func requestHeader() http.Header {
	return http.Header{
		"Content-Type": {"application/json"},
		"User-Agent":   {"millrace"},
	}
}

// payload renders the incoming-webhook payload for ev; its errors are
// permanent.
func (s *Slack) payload(ev *event.Event) ([]byte, error) {
	var m message
	var err error
	if m.Text, err = s.text.Render(ev); err != nil {
		return nil, handlers.Permanent(fmt.Errorf("slack: render text: %w", err))
	}
	if s.channel != nil {
		if m.Channel, err = s.channel.Render(ev); err != nil {
			return nil, handlers.Permanent(fmt.Errorf("slack: render channel: %w", err))
		}
	}
	body, err := json.Marshal(m)
	if err != nil {
		return nil, handlers.Permanent(fmt.Errorf("slack: encode message: %w", err))
	}
	return body, nil
}

// BreakerKey names the host of the incoming webhook, without its path,
// which holds the token.
func (s *Slack) BreakerKey() string { return handlers.URLEndpoint(s.url) }

// Close releases the idle connections. It is safe to call more than once.
func (s *Slack) Close() error {
	s.tr.CloseIdleConnections()
	return nil
}
