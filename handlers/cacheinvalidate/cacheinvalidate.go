package cacheinvalidate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"text/template/parse"

	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
)

// BatchSize is the SCAN COUNT hint and the most keys one UNLINK deletes.
const BatchSize = 500

// Config is the cache_invalidate action's section.
type Config struct {
	// Keys are templates over the event, e.g. "order:{{.entity_id}}" or
	// "orders:list:*". Required.
	Keys []string `koanf:"keys"`
	// Prefix is put in front of every key, as is (never a pattern).
	// Default "".
	Prefix string `koanf:"prefix"`
}

// Validate compiles every key template.
func (c Config) Validate() error {
	var errs []error
	if len(c.Keys) == 0 {
		errs = append(errs, config.Errorf("keys", "at least one key is required"))
	}
	for i, src := range c.Keys {
		path := config.Index("keys", i)
		k, err := compileKey(path, src)
		if err != nil {
			errs = append(errs, config.Errorf(path, "%v", err))
			continue
		}
		if k.pattern && c.Prefix == "" && strings.Trim(src, "*?") == "" {
			errs = append(errs, config.Errorf(path, "%q would delete every key of the database", src))
		}
	}
	return errors.Join(errs...)
}

// key is a compiled key template.
type key struct {
	path    string
	t       *handlers.Template
	pattern bool
}

// compileKey compiles a key template with the template language of every
// action. The key is a pattern when the template's own text (outside
// {{ }}) holds a glob character.
func compileKey(path, src string) (*key, error) {
	t, err := handlers.CompileTemplate(path, src)
	if err != nil {
		return nil, err
	}
	// A second parse, without the function table, to look at the text.
	tree := parse.New(path)
	tree.Mode = parse.SkipFuncCheck
	trees := map[string]*parse.Tree{}
	if _, err := tree.Parse(src, "", "", trees); err != nil {
		return nil, fmt.Errorf("template does not parse: %w", err)
	}
	k := &key{path: path, t: t}
	usesGlobEscape := false
	for _, tt := range trees {
		handlers.WalkTemplate(tt.Root, func(n parse.Node) {
			switch n := n.(type) {
			case *parse.TextNode:
				k.pattern = k.pattern || strings.ContainsAny(string(n.Text), "*?[")
			case *parse.IdentifierNode:
				usesGlobEscape = usesGlobEscape || n.Ident == "glob_escape"
			}
		})
	}
	if usesGlobEscape {
		return nil, errors.New("glob_escape is not needed here: in a pattern, values from the event are escaped for you, and a key without a glob character is deleted as written")
	}
	return k, nil
}

// render renders the key for ev, with prefix in front. A pattern is
// rendered on esc, the event with its glob characters quoted.
func (k *key) render(prefix string, ev, esc *event.Event) (string, error) {
	var b strings.Builder
	var err error
	if k.pattern {
		b.WriteString(handlers.GlobEscape(prefix))
		err = k.t.Execute(&b, esc)
	} else {
		b.WriteString(prefix)
		err = k.t.Execute(&b, ev)
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", k.path, err)
	}
	return b.String(), nil
}

// Escape quotes the glob characters of s for a Redis MATCH pattern so
// that s matches only itself. It uses one-character classes ([*], [?],
// [[]) rather than backslashes, and doubles a backslash, so that the
// quoting survives functions that re-quote their input as JSON (json,
// an object rendered as text): "[*]" stays "[*]", and a doubled
// backslash only narrows the match.
func Escape(s string) string {
	if !strings.ContainsAny(s, `*?[\`) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '*', '?', '[':
			b.WriteByte('[')
			b.WriteByte(c)
			b.WriteByte(']')
		case '\\':
			b.WriteString(`\\`)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// escaped returns a copy of ev whose strings, at any depth, map keys
// included, are quoted with Escape.
func escaped(ev *event.Event) *event.Event {
	c := *ev
	c.ID, c.Type, c.Entity, c.EntityID = Escape(ev.ID), event.Type(Escape(string(ev.Type))), Escape(ev.Entity), Escape(ev.EntityID)
	c.UserID, c.TenantID, c.Source = Escape(ev.UserID), Escape(ev.TenantID), Escape(ev.Source)
	if ev.Data != nil {
		c.Data = escapeValue(ev.Data).(map[string]any)
	}
	if ev.Changes != nil {
		c.Changes = make(map[string]event.Change, len(ev.Changes))
		for k, ch := range ev.Changes {
			c.Changes[Escape(k)] = event.Change{Old: escapeValue(ch.Old), New: escapeValue(ch.New)}
		}
	}
	return &c
}

func escapeValue(v any) any {
	switch x := v.(type) {
	case string:
		return Escape(x)
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[Escape(k)] = escapeValue(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = escapeValue(e)
		}
		return l
	}
	return v
}

// CacheInvalidate is the cache_invalidate action.
type CacheInvalidate struct {
	client redis.UniversalClient
	keys   []*key
	prefix string
	logger *slog.Logger
}

var (
	_ handlers.Action   = (*CacheInvalidate)(nil)
	_ handlers.Renderer = (*CacheInvalidate)(nil)
)

var _ handlers.ConfigChecker = Config{}

// CheckConfig checks that the file has the [redis] section whose keys
// the action deletes.
func (c Config) CheckConfig(cfg *config.Config, _ config.Features) error {
	return checkRedis(cfg.Redis)
}

func checkRedis(r config.Redis) error {
	if r.URL == "" && r.URLEnv == "" {
		return errors.New("redis.url is not set: the cache_invalidate action needs a [redis] section with url or url_env")
	}
	return nil
}

// New builds the action on the shared Redis client of the [redis]
// section. The client connects on first use, not here.
func New(_ context.Context, c Config, deps handlers.Deps) (handlers.Action, error) {
	if deps.Config != nil {
		if err := checkRedis(deps.Config.Redis); err != nil {
			return nil, fmt.Errorf("cache_invalidate: %w", err)
		}
	}
	if deps.Redis == nil {
		return nil, errors.New("cache_invalidate: no Redis client is available (set redis.url or redis.url_env)")
	}
	client, err := deps.Redis()
	if err != nil {
		return nil, fmt.Errorf("cache_invalidate: %w", err)
	}
	a := &CacheInvalidate{client: client, prefix: c.Prefix, logger: deps.Logger}
	if a.logger == nil {
		a.logger = slog.New(slog.DiscardHandler)
	}
	for i, src := range c.Keys {
		k, err := compileKey(config.Index("keys", i), src)
		if err != nil {
			return nil, err
		}
		a.keys = append(a.keys, k)
	}
	return a, nil
}

// Register adds the "cache_invalidate" type to r.
func Register(r *handlers.Registry) error {
	return handlers.Register(r, "cache_invalidate", New)
}

// BreakerKey names the Redis server, redis://host:port/db, so that the
// actions deleting its keys share one circuit breaker; "" (a breaker of
// the action's own) for a cluster or failover client.
func (a *CacheInvalidate) BreakerKey() string {
	c, ok := a.client.(*redis.Client)
	if !ok {
		return ""
	}
	o := c.Options()
	host, port, err := net.SplitHostPort(o.Addr)
	if err != nil {
		return ""
	}
	p, _ := strconv.Atoi(port)
	return handlers.ServerEndpoint("redis", host, p, "/"+strconv.Itoa(o.DB))
}

// Execute renders every key and deletes what it names. Deleting a key
// that does not exist is not an error.
func (a *CacheInvalidate) Execute(ctx context.Context, ev *event.Event) error {
	literals, patterns, err := a.render(ev)
	if err != nil {
		return err
	}
	var deleted int64
	if len(literals) > 0 {
		n, err := unlink(ctx, a.client, literals)
		if err != nil {
			return classify(fmt.Errorf("cache_invalidate: unlink: %w", err))
		}
		deleted += n
	}
	for _, p := range patterns {
		n, err := deleteMatching(ctx, a.client, p)
		deleted += n
		if err != nil {
			return classify(fmt.Errorf("cache_invalidate: delete %q: %w", p, err))
		}
	}
	a.logger.DebugContext(ctx, "cache keys deleted", "event_id", ev.ID, "keys", len(literals), "patterns", len(patterns), "deleted", deleted)
	return nil
}

// Render returns what Execute would delete for ev, one line each in
// Body: "UNLINK key" for a key, "SCAN+UNLINK pattern" for a pattern.
func (a *CacheInvalidate) Render(_ context.Context, ev *event.Event) (handlers.Effect, error) {
	literals, patterns, err := a.render(ev)
	if err != nil {
		return handlers.Effect{}, err
	}
	var b strings.Builder
	for _, k := range literals {
		b.WriteString("UNLINK " + k + "\n")
	}
	for _, p := range patterns {
		b.WriteString("SCAN+UNLINK " + p + "\n")
	}
	return handlers.Effect{Kind: "cache_invalidate", Method: "UNLINK", Target: a.BreakerKey(), Body: b.String()}, nil
}

// render renders every key for ev: the literal keys (empty ones left
// out) and the patterns. Its errors are permanent.
func (a *CacheInvalidate) render(ev *event.Event) (literals, patterns []string, err error) {
	var esc *event.Event
	for _, k := range a.keys {
		if k.pattern && esc == nil {
			esc = escaped(ev)
		}
		s, err := k.render(a.prefix, ev, esc)
		if err != nil {
			return nil, nil, handlers.Permanent(fmt.Errorf("cache_invalidate: %w", err))
		}
		switch {
		case k.pattern:
			patterns = append(patterns, s)
		case s != "":
			literals = append(literals, s)
		}
	}
	return literals, patterns, nil
}

// unlink deletes keys with one UNLINK, or, on a cluster, one UNLINK per
// key in a pipeline (a multi-key command must stay within one slot).
func unlink(ctx context.Context, c redis.UniversalClient, keys []string) (int64, error) {
	if _, ok := c.(*redis.ClusterClient); !ok {
		return c.Unlink(ctx, keys...).Result()
	}
	return unlinkEach(ctx, c, keys)
}

func unlinkEach(ctx context.Context, c redis.Cmdable, keys []string) (int64, error) {
	cmds, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Unlink(ctx, k)
		}
		return nil
	})
	var n int64
	for _, cmd := range cmds {
		if ic, ok := cmd.(*redis.IntCmd); ok {
			n += ic.Val()
		}
	}
	return n, err
}

// deleteMatching deletes the keys that match pattern, BatchSize at a
// time. On a cluster it scans every master.
func deleteMatching(ctx context.Context, c redis.UniversalClient, pattern string) (int64, error) {
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		return scanUnlink(ctx, c, pattern, func(keys []string) (int64, error) { return c.Unlink(ctx, keys...).Result() })
	}
	var total atomic.Int64
	err := cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		n, err := scanUnlink(ctx, node, pattern, func(keys []string) (int64, error) { return unlinkEach(ctx, node, keys) })
		total.Add(n)
		return err
	})
	return total.Load(), err
}

func scanUnlink(ctx context.Context, c redis.Cmdable, pattern string, del func([]string) (int64, error)) (int64, error) {
	var deleted int64
	batch := make([]string, 0, BatchSize)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		n, err := del(batch)
		deleted += n
		batch = batch[:0]
		return err
	}
	it := c.Scan(ctx, 0, pattern, BatchSize).Iterator()
	for it.Next(ctx) {
		batch = append(batch, it.Val())
		if len(batch) == BatchSize {
			if err := flush(); err != nil {
				return deleted, err
			}
		}
	}
	if err := it.Err(); err != nil {
		return deleted, err
	}
	return deleted, flush()
}

// classify marks errors that a retry cannot fix as permanent: a missing
// permission (NOPERM) or a server without UNLINK (Redis before 4.0).
// Network errors and every other reply are transient.
func classify(err error) error {
	var re redis.Error
	if errors.As(err, &re) {
		msg := re.Error()
		if strings.HasPrefix(msg, "NOPERM") || strings.HasPrefix(msg, "ERR unknown command") {
			return handlers.Permanent(err)
		}
	}
	return err
}
