package try

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/engine"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

// Set is the compiled observers of one config, built so that nothing
// they do can reach a service.
type Set struct {
	obs     []*engine.Observer
	matcher *engine.Matcher
	closers []func()
}

// errDisabled is what a dry-run dependency returns if an action tried to
// reach a service; Render never does.
var errDisabled = errors.New("try: sending is disabled in a dry run")

// Build compiles cfg's observers with reg. The actions get dependencies
// that cannot reach anything: Publish fails, and the Redis client and
// database pools are configured from the file, so that effects name the
// real servers, but their dialers refuse every connection. Secrets named
// by *_env fields are read as `millrace run` reads them.
func Build(ctx context.Context, cfg *config.Config, reg *handlers.Registry) (*Set, error) {
	s := &Set{}
	var mu sync.Mutex
	closer := func(f func()) {
		mu.Lock()
		s.closers = append(s.closers, f)
		mu.Unlock()
	}
	deps := handlers.Deps{
		Logger: slog.New(slog.DiscardHandler),
		Config: cfg,
		Publish: func(context.Context, string, string, []byte) error {
			return errDisabled
		},
		Redis: func() (redis.UniversalClient, error) {
			url, err := config.Secret(cfg.Redis.URL, cfg.Redis.URLEnv)
			if err != nil {
				return nil, fmt.Errorf("redis.url_env: %w", err)
			}
			opts, err := redis.ParseURL(url)
			if err != nil {
				// A Sentinel URL (master_name=...): the client never
				// dials, so the master's address does not matter.
				if _, ferr := redis.ParseFailoverURL(url); ferr != nil {
					return nil, fmt.Errorf("redis.url: %w", err)
				}
				opts = &redis.Options{}
			}
			opts.MaxRetries = -1
			opts.Dialer = func(context.Context, string, string) (net.Conn, error) { return nil, errDisabled }
			c := redis.NewClient(opts)
			closer(func() { _ = c.Close() })
			return c, nil
		},
		Database: func(name string) (*pgxpool.Pool, error) {
			d, ok := cfg.Databases[name]
			if !ok {
				return nil, fmt.Errorf("databases.%s is not configured", name)
			}
			url, err := config.Secret(d.URL, d.URLEnv)
			if err != nil {
				return nil, fmt.Errorf("databases.%s.url_env: %w", name, err)
			}
			pc, err := pgxpool.ParseConfig(url)
			if err != nil {
				return nil, fmt.Errorf("databases.%s: %w", name, err)
			}
			pc.MinConns = 0
			pc.ConnConfig.LookupFunc = func(context.Context, string) ([]string, error) { return nil, errDisabled }
			pc.ConnConfig.DialFunc = func(context.Context, string, string) (net.Conn, error) { return nil, errDisabled }
			p, err := pgxpool.NewWithConfig(ctx, pc)
			if err != nil {
				return nil, fmt.Errorf("databases.%s: %w", name, err)
			}
			closer(p.Close)
			return p, nil
		},
	}
	obs, err := engine.Compile(ctx, cfg, reg, deps)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.obs, s.matcher = obs, engine.NewMatcher(obs)
	return s, nil
}

// Close releases the actions and their dependencies.
func (s *Set) Close() {
	_ = engine.CloseAll(s.obs)
	for _, c := range s.closers {
		c()
	}
}

// Observers returns the observer names, in config order.
func (s *Set) Observers() []string {
	out := make([]string, len(s.obs))
	for i, o := range s.obs {
		out[i] = o.Name
	}
	return out
}

// Outcome is what one observer does with one event.
type Outcome struct {
	Observer string
	// Accepted: the event matched the observer's event and entity and
	// its condition held (or it has none).
	Accepted bool
	Effects  []Rendered
	Errors   []Error
}

// Rendered is one action's effect for one event.
type Rendered struct {
	// Action is the action's key path, e.g. "observers.x.actions[0]".
	Action string           `json:"action"`
	Type   string           `json:"type"`
	Effect *handlers.Effect `json:"effect,omitempty"`
	// NotRendered: the action type does not implement
	// handlers.Renderer; the action would run, and what it would do is
	// unknown.
	NotRendered bool `json:"not_rendered,omitempty"`
}

// Error is a condition or template that failed on an event.
type Error struct {
	Observer string `json:"observer"`
	// Path is the key path of what failed: observers.x.condition, or an
	// action's section.
	Path  string `json:"path"`
	Error string `json:"error"`
}

// Run runs ev through every observer that matches it by type and
// entity: the condition, then each action's Render.
func (s *Set) Run(ctx context.Context, ev *event.Event) []Outcome {
	var out []Outcome
	for _, o := range s.matcher.Match(ev) {
		oc := Outcome{Observer: o.Name}
		ok, err := o.Accepts(ev)
		if err != nil {
			oc.Errors = append(oc.Errors, Error{Observer: o.Name, Path: "observers." + o.Name + ".condition", Error: err.Error()})
			out = append(out, oc)
			continue
		}
		if !ok {
			continue
		}
		oc.Accepted = true
		for _, b := range o.Actions {
			r := Rendered{Action: b.Spec.Path, Type: b.Spec.Type}
			rd, ok := b.Action.(handlers.Renderer)
			if !ok {
				r.NotRendered = true
				oc.Effects = append(oc.Effects, r)
				continue
			}
			e, err := rd.Render(ctx, ev)
			if err != nil {
				oc.Errors = append(oc.Errors, Error{Observer: o.Name, Path: b.Spec.Path, Error: err.Error()})
				continue
			}
			if e.Kind == "" {
				e.Kind = b.Spec.Type
			}
			r.Effect = &e
			oc.Effects = append(oc.Effects, r)
		}
		out = append(out, oc)
	}
	return out
}

// Line is one input line: its event, or why it could not be read.
type Line struct {
	N     int
	Event *event.Event
	Err   error
}

// maxLine bounds one envelope; the router refuses larger ones too.
const maxLine = 16 << 20

// ReadEvents reads one envelope per line (blank lines are skipped) and
// calls fn for each line, decoded or not. It stops at fn's error or a
// read error.
func ReadEvents(r io.Reader, fn func(Line) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	n := 0
	for sc.Scan() {
		n++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		ev, err := event.Decode(b)
		if err := fn(Line{N: n, Event: ev, Err: err}); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("line %d: %w", n+1, err)
	}
	return nil
}
