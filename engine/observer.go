package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/internal/lazyctx"
)

// Observer is a compiled observer: a name, what it matches, an optional
// condition and its built actions.
type Observer struct {
	Name      string
	Event     string // INSERT, UPDATE, DELETE, CUSTOM, READ or "*"
	Entity    string // an entity type or "*"
	Condition *Condition
	Actions   []*Bound
	Config    config.Observer
}

// Bound is one built action of an observer.
type Bound struct {
	// Index is the action's place in the observer's list.
	Index int
	Spec  *handlers.Spec
	handlers.Action
}

// ID names the action for logs, metrics and keys: "observer/0:webhook".
func (b *Bound) ID(observer string) string {
	return fmt.Sprintf("%s/%d:%s", observer, b.Index, b.Spec.Type)
}

// Check decodes and validates every observer of cfg against reg without
// building anything: unknown action types, bad action fields, conditions
// and templates that do not compile, and, for action types whose Config
// is a ConfigChecker, what they need of the rest of cfg and of features,
// those of cfg's topology. It returns every problem.
func Check(cfg *config.Config, reg *handlers.Registry, features config.Features) error {
	ds, err := decodeAll(cfg, reg)
	errs := []error{err}
	for _, d := range ds {
		for _, s := range d.specs {
			if c, ok := s.Config.(handlers.ConfigChecker); ok {
				errs = append(errs, config.Prefix(s.Path, c.CheckConfig(cfg, features)))
			}
		}
	}
	return errors.Join(errs...)
}

type decoded struct {
	name  string
	cond  *Condition
	specs []*handlers.Spec
}

func decodeAll(cfg *config.Config, reg *handlers.Registry) ([]decoded, error) {
	var errs []error
	var out []decoded
	for _, name := range cfg.ObserverNames() {
		o := cfg.Observers[name]
		d := decoded{name: name}
		path := "observers." + name
		if o.Condition != "" {
			c, err := CompileCondition(o.Condition)
			if err != nil {
				errs = append(errs, config.Errorf(path+".condition", "%v", err))
			}
			d.cond = c
		}
		for i, a := range o.Actions {
			s, err := reg.Decode(config.Index(path+".actions", i), a)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			d.specs = append(d.specs, s)
		}
		out = append(out, d)
	}
	return out, errors.Join(errs...)
}

// Compile checks cfg's observers and builds their actions. On error it
// closes what it already built.
func Compile(ctx context.Context, cfg *config.Config, reg *handlers.Registry, deps handlers.Deps) ([]*Observer, error) {
	ds, err := decodeAll(cfg, reg)
	if err != nil {
		return nil, err
	}
	var out []*Observer
	for _, d := range ds {
		oc := cfg.Observers[d.name]
		o := &Observer{
			Name: d.name, Event: strings.ToUpper(oc.Event), Entity: oc.Entity,
			Condition: d.cond, Config: oc,
		}
		for i, s := range d.specs {
			ad := deps
			ad.ActionHash = s.Hash
			if ad.Logger != nil {
				ad.Logger = ad.Logger.With("observer", d.name, "action", fmt.Sprintf("%d:%s", i, s.Type))
			}
			a, err := reg.Build(ctx, s, ad)
			if err != nil {
				CloseAll(append(out, o))
				return nil, err
			}
			o.Actions = append(o.Actions, &Bound{Index: i, Spec: s, Action: a})
		}
		out = append(out, o)
	}
	return out, nil
}

// CloseAll closes every action that implements io.Closer, once.
func CloseAll(obs []*Observer) error {
	var errs []error
	for _, o := range obs {
		for _, b := range o.Actions {
			if c, ok := b.Action.(interface{ Close() error }); ok {
				if err := c.Close(); err != nil {
					errs = append(errs, fmt.Errorf("close %s: %w", b.ID(o.Name), err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Matches reports whether o wants ev by event type and entity (the
// condition is separate: see Observer.Accepts).
func (o *Observer) Matches(ev *event.Event) bool {
	return (o.Event == "*" || o.Event == string(ev.Type)) && (o.Entity == "*" || o.Entity == ev.Entity)
}

// Accepts evaluates the observer's condition on ev. An error is permanent
// for this event and observer: the condition cannot become true by
// retrying.
func (o *Observer) Accepts(ev *event.Event) (bool, error) {
	if o.Condition == nil {
		return true, nil
	}
	ok, err := o.Condition.Eval(ev)
	if err != nil {
		return false, handlers.Permanent(fmt.Errorf("observer %q: condition: %w", o.Name, err))
	}
	return ok, nil
}

// Exec runs one bound action for one event. The router wraps it with the
// result cache; Direct runs the action as it is.
type Exec func(ctx context.Context, ev *event.Event, b *Bound) error

// Direct is the Exec that calls the action.
func Direct(ctx context.Context, ev *event.Event, b *Bound) error { return b.Execute(ctx, ev) }

// Run runs the observer's actions on ev, at most Config.Concurrency at a
// time (one after another, in order, when it is 1 or less), each under
// its own Config.Timeout (none when it is zero), through exec. A failing
// action does not stop the others. It returns every action's error,
// joined; each names its action. exec runs through handlers.Execute, so a
// panicking action is reported as a permanent error, not a crash.
func (o *Observer) Run(ctx context.Context, ev *event.Event, exec Exec) error {
	if exec == nil {
		exec = Direct
	}
	limit := max(o.Config.Concurrency, 1)
	if limit == 1 || len(o.Actions) == 1 {
		// Only failures are collected: the common case allocates nothing.
		var errs []error
		for _, b := range o.Actions {
			if err := o.run(ctx, ev, exec, b); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	errs := make([]error, len(o.Actions))
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i, b := range o.Actions {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = o.run(ctx, ev, exec, b)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// run runs one action of Run.
func (o *Observer) run(ctx context.Context, ev *event.Event, exec Exec, b *Bound) error {
	if timeout := o.Config.Timeout.D(); timeout > 0 {
		// Armed only if the action waits on it (lazyctx).
		tctx := lazyctx.WithTimeout(ctx, timeout)
		defer tctx.Cancel()
		ctx = tctx
	}
	call := handlers.ActionFunc(func(ctx context.Context, ev *event.Event) error { return exec(ctx, ev, b) })
	if err := handlers.Execute(ctx, call, ev); err != nil {
		return fmt.Errorf("action %s: %w", b.ID(o.Name), err)
	}
	return nil
}

// Matcher finds the observers of an event by type and entity with two map
// lookups and no allocation, whatever the number of observers.
type Matcher struct {
	// index maps an event type to, for each entity named by some
	// observer, the observers of that entity followed by those of "*";
	// the "*" entry holds those of "*" alone, for other entities.
	index map[string]map[string][]*Observer
}

// NewMatcher indexes obs. The order of obs is kept within each result.
func NewMatcher(obs []*Observer) *Matcher {
	exact := map[string]map[string][]*Observer{}
	for _, o := range obs {
		types := []string{o.Event}
		if o.Event == "*" {
			types = types[:0]
			for _, t := range event.Types {
				types = append(types, string(t))
			}
		}
		for _, t := range types {
			if exact[t] == nil {
				exact[t] = map[string][]*Observer{}
			}
			exact[t][o.Entity] = append(exact[t][o.Entity], o)
		}
	}
	m := &Matcher{index: make(map[string]map[string][]*Observer, len(exact))}
	for t, byEntity := range exact {
		wild := byEntity["*"]
		merged := make(map[string][]*Observer, len(byEntity))
		for entity, list := range byEntity {
			if entity != "*" {
				list = append(list[:len(list):len(list)], wild...)
			}
			merged[entity] = list
		}
		m.index[t] = merged
	}
	return m
}

// Match returns the observers whose event and entity match ev: those of
// the exact entity first, then those of "*". The slice is shared: the
// caller must not modify it.
func (m *Matcher) Match(ev *event.Event) []*Observer {
	byEntity := m.index[string(ev.Type)]
	if list, ok := byEntity[ev.Entity]; ok {
		return list
	}
	return byEntity["*"]
}
