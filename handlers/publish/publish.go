package publish

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"

	"github.com/google/uuid"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

// Config is the publish action's section.
type Config struct {
	// Topic is the bus topic to publish to, e.g. "orders_shipped".
	// Required.
	Topic string `koanf:"topic"`
	// Body is a template over the event whose output is the message
	// payload. Default: the event's JSON envelope, unchanged.
	Body string `koanf:"body"`
	// BodyFormat is json (default) or text. A json body is escaped by
	// context and always renders valid JSON; a text body is rendered as
	// is.
	BodyFormat string `koanf:"body_format"`
}

// SetDefaults fills the defaults.
func (c *Config) SetDefaults() { c.BodyFormat = "json" }

func (c Config) compileBody() (*handlers.Template, error) {
	if c.BodyFormat == "text" {
		return handlers.CompileTemplate("body", c.Body)
	}
	return handlers.CompileJSONTemplate("body", c.Body)
}

var topicRE = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)

// Validate checks the topic and compiles the body template.
func (c Config) Validate() error {
	var errs []error
	switch {
	case c.Topic == "":
		errs = append(errs, config.Errorf("topic", "is required"))
	case !topicRE.MatchString(c.Topic):
		errs = append(errs, config.Errorf("topic", "%q is not a topic: use letters, digits, '_' and '-', in tokens separated by dots", c.Topic))
	}
	switch c.BodyFormat {
	case "json", "text":
		if c.Body != "" {
			if _, err := c.compileBody(); err != nil {
				errs = append(errs, config.Errorf("body", "%v", err))
			}
		}
	default:
		errs = append(errs, config.Errorf("body_format", "%q is not one of json, text", c.BodyFormat))
	}
	return errors.Join(errs...)
}

var _ handlers.ConfigChecker = Config{}

// CheckConfig checks the topic against the topology: a bus without
// topics (the postgres topology's change log) carries router.topic only
// and would put the message among the events whatever its topic; and the
// event unchanged must not go back to router.topic.
func (c Config) CheckConfig(cfg *config.Config, f config.Features) error {
	if c.Topic == "" {
		return nil // Validate reports it
	}
	if !f.Topics && c.Topic != cfg.Router.Topic {
		return config.Errorf("topic", "the %s topology's bus has no topics besides router.topic (%q): a message for %q would land among the events; "+
			"use a topology whose bus has topics, or publish a body that is a new event to router.topic", cfg.Topology, cfg.Router.Topic, c.Topic)
	}
	if err := c.checkLoop(cfg); err != nil {
		return &config.Error{Path: "topic", Msg: err.Error()}
	}
	return nil
}

// checkLoop refuses the event unchanged on router.topic: it would come
// back to the same observers.
func (c Config) checkLoop(cfg *config.Config) error {
	if c.Topic == cfg.Router.Topic && c.Body == "" {
		return fmt.Errorf("topic %q is router.topic: the event would come back to the same observers; publish to another topic or set a body", c.Topic)
	}
	return nil
}

// Publish is the publish action.
type Publish struct {
	topic   string
	body    *handlers.Template // nil: the event itself
	hash    string
	publish func(ctx context.Context, topic, id string, payload []byte) error
	logger  *slog.Logger
}

var (
	_ handlers.Action   = (*Publish)(nil)
	_ handlers.Renderer = (*Publish)(nil)
)

// New builds the action on deps.Publish.
func New(_ context.Context, c Config, deps handlers.Deps) (handlers.Action, error) {
	if deps.Publish == nil {
		return nil, errors.New("publish: no bus to publish to")
	}
	if deps.Config != nil {
		if err := c.checkLoop(deps.Config); err != nil {
			return nil, fmt.Errorf("publish: %w", err)
		}
	}
	p := &Publish{topic: c.Topic, hash: deps.ActionHash, publish: deps.Publish, logger: deps.Logger}
	if p.logger == nil {
		p.logger = slog.New(slog.DiscardHandler)
	}
	if c.Body != "" {
		t, err := c.compileBody()
		if err != nil {
			return nil, err
		}
		p.body = t
	}
	return p, nil
}

// Register adds the "publish" type to r.
func Register(r *handlers.Registry) error { return handlers.Register(r, "publish", New) }

// idNamespace is the UUID namespace of outgoing message ids.
var idNamespace = uuid.MustParse("6d1c2a8e-3f0b-4c55-8a47-9e2f51b7c0d4")

// MessageID returns the id of the message that the action with config
// hash actionHash publishes for the event with id eventID: a UUID (SHA-1,
// version 5) of both, so it is the same on every retry.
func MessageID(eventID, actionHash string) string {
	return uuid.NewSHA1(idNamespace, []byte(eventID+"\x00"+actionHash)).String()
}

// Execute publishes the event or the rendered body. A bus error is
// transient; a body that cannot be rendered is permanent.
func (p *Publish) Execute(ctx context.Context, ev *event.Event) error {
	id, payload, err := p.message(ev)
	if err != nil {
		return err
	}
	if err := p.publish(ctx, p.topic, id, payload); err != nil {
		return fmt.Errorf("publish %s: %w", p.topic, err)
	}
	p.logger.DebugContext(ctx, "event published", "topic", p.topic, "event_id", ev.ID, "message_id", id)
	return nil
}

// Render returns the message Execute would publish for ev: its topic,
// id (header Message-Id) and payload.
func (p *Publish) Render(_ context.Context, ev *event.Event) (handlers.Effect, error) {
	id, payload, err := p.message(ev)
	if err != nil {
		return handlers.Effect{}, err
	}
	return handlers.Effect{Kind: "publish", Method: "PUBLISH", Target: p.topic,
		Headers: map[string]string{"Message-Id": id}, Body: string(payload)}, nil
}

// message returns the id and payload of ev's message; its errors are
// permanent.
func (p *Publish) message(ev *event.Event) (string, []byte, error) {
	var payload []byte
	if p.body == nil {
		b, err := event.Encode(ev)
		if err != nil {
			return "", nil, handlers.Permanent(fmt.Errorf("publish %s: encode event: %w", p.topic, err))
		}
		payload = b
	} else {
		s, err := p.body.Render(ev)
		if err != nil {
			return "", nil, handlers.Permanent(fmt.Errorf("publish %s: body: %w", p.topic, err))
		}
		payload = []byte(s)
	}
	return MessageID(ev.ID, p.hash), payload, nil
}
