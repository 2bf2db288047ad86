package cacheinvalidate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"text/template"
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

// Names of the functions that compileKey appends to every action of a key
// template, chosen so as not to clash with functions users call.
const (
	escapeFunc = "_millrace_glob_escape"
	plainFunc  = "_millrace_plain"
)

// key is a compiled key template.
type key struct {
	path    string
	t       *template.Template
	pattern bool
}

// compileKey parses a key template. The key is a pattern when the
// template's own text (outside {{ }}) holds a glob character. Every
// action's output is then passed through a function: glob escaping for
// patterns, plain printing (nothing for a missing value) for literal keys.
func compileKey(name, src string) (*key, error) {
	t, err := template.New(name).Option("missingkey=zero").
		Funcs(template.FuncMap{escapeFunc: printEscaped, plainFunc: printPlain}).Parse(src)
	if err != nil {
		return nil, fmt.Errorf("template does not parse: %w", err)
	}
	k := &key{path: name, t: t}
	for _, tt := range t.Templates() {
		if tt.Tree != nil {
			k.pattern = k.pattern || hasGlobText(tt.Tree.Root)
		}
	}
	fn := plainFunc
	if k.pattern {
		fn = escapeFunc
	}
	for _, tt := range t.Templates() {
		if tt.Tree != nil {
			wrapActions(tt.Tree.Root, tt.Tree, fn)
		}
	}
	return k, nil
}

// render renders the key for ev, with prefix in front.
func (k *key) render(prefix string, ev *event.Event) (string, error) {
	var b strings.Builder
	if k.pattern {
		b.WriteString(Escape(prefix))
	} else {
		b.WriteString(prefix)
	}
	if err := k.t.Execute(&b, handlers.View(ev)); err != nil {
		return "", fmt.Errorf("%s: %w", k.path, err)
	}
	return b.String(), nil
}

func hasGlobText(n parse.Node) bool {
	switch x := n.(type) {
	case *parse.ListNode:
		if x == nil {
			return false
		}
		for _, c := range x.Nodes {
			if hasGlobText(c) {
				return true
			}
		}
	case *parse.TextNode:
		return strings.ContainsAny(string(x.Text), "*?[")
	case *parse.IfNode:
		return hasGlobText(x.List) || hasGlobText(x.ElseList)
	case *parse.RangeNode:
		return hasGlobText(x.List) || hasGlobText(x.ElseList)
	case *parse.WithNode:
		return hasGlobText(x.List) || hasGlobText(x.ElseList)
	}
	return false
}

// wrapActions appends "| fn" to every action that prints, as html/template
// does with its escapers.
func wrapActions(n parse.Node, tree *parse.Tree, fn string) {
	switch x := n.(type) {
	case *parse.ListNode:
		if x == nil {
			return
		}
		for _, c := range x.Nodes {
			wrapActions(c, tree, fn)
		}
	case *parse.ActionNode:
		if len(x.Pipe.Decl) > 0 { // {{$x := ...}} prints nothing
			return
		}
		id := parse.NewIdentifier(fn).SetTree(tree).SetPos(x.Pos)
		x.Pipe.Cmds = append(x.Pipe.Cmds, &parse.CommandNode{NodeType: parse.NodeCommand, Pos: x.Pos, Args: []parse.Node{id}})
	case *parse.IfNode:
		wrapActions(x.List, tree, fn)
		wrapActions(x.ElseList, tree, fn)
	case *parse.RangeNode:
		wrapActions(x.List, tree, fn)
		wrapActions(x.ElseList, tree, fn)
	case *parse.WithNode:
		wrapActions(x.List, tree, fn)
		wrapActions(x.ElseList, tree, fn)
	}
}

func printPlain(args ...any) string {
	if len(args) == 1 && args[0] == nil {
		return ""
	}
	return fmt.Sprint(args...)
}

func printEscaped(args ...any) string { return Escape(printPlain(args...)) }

// Escape quotes the glob characters of s (\ * ? [ ]) so that a Redis MATCH
// pattern matches s literally.
func Escape(s string) string {
	if !strings.ContainsAny(s, `\*?[]`) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '\\', '*', '?', '[', ']':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// CacheInvalidate is the cache_invalidate action.
type CacheInvalidate struct {
	client redis.UniversalClient
	keys   []*key
	prefix string
	logger *slog.Logger
}

var _ handlers.Action = (*CacheInvalidate)(nil)

// New builds the action on the shared Redis client of the [redis]
// section. The client connects on first use, not here.
func New(_ context.Context, c Config, deps handlers.Deps) (handlers.Action, error) {
	if deps.Config != nil && deps.Config.Redis.URL == "" && deps.Config.Redis.URLEnv == "" {
		return nil, errors.New("cache_invalidate: redis.url is not set: the action needs a [redis] section with url or url_env")
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

// Execute renders every key and deletes what it names. Deleting a key
// that does not exist is not an error.
func (a *CacheInvalidate) Execute(ctx context.Context, ev *event.Event) error {
	var literals, patterns []string
	for _, k := range a.keys {
		s, err := k.render(a.prefix, ev)
		if err != nil {
			return handlers.Permanent(fmt.Errorf("cache_invalidate: %w", err))
		}
		switch {
		case k.pattern:
			patterns = append(patterns, s)
		case s != "":
			literals = append(literals, s)
		}
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
