package handlers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/millrace/millrace/config"
)

// Config is an action type's typed config section. Validate checks it
// without I/O and returns every problem (errors.Join); *config.Error
// values with a Path relative to the action get the action's path put in
// front. A Config may also implement config.Defaulter.
type Config interface {
	Validate() error
}

// ConfigChecker is implemented by a Config that needs more than its own
// section: another section of the file ([smtp], [databases.NAME],
// [redis]) or something of the topology (config.Features). Check calls
// CheckConfig after Validate, with the whole config and the features of
// its topology, so that `millrace validate` finds what would otherwise
// fail, or go wrong silently, at run time. Like Validate, it does no I/O
// and does not read the environment. Errors follow Validate's rules: a
// *config.Error path relative to the action (or empty, for the action
// itself) gets the action's path put in front.
type ConfigChecker interface {
	CheckConfig(cfg *config.Config, features config.Features) error
}

// BuildFunc turns a validated config into a running Action.
type BuildFunc[C Config] func(ctx context.Context, cfg C, deps Deps) (Action, error)

// Registry maps action type names to their decoders and builders. It is a
// value: cmd/ fills one with the built-in types, tests start from an
// empty one. It is not safe for concurrent registration.
type Registry struct {
	types map[string]entry
}

type entry struct {
	decode func(raw map[string]any, path string) (Config, error)
	build  func(ctx context.Context, cfg Config, deps Deps) (Action, error)
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{types: map[string]entry{}} }

var typeNameRE = regexp.MustCompile(`^[a-z0-9]+(_[a-z0-9]+)*$`)

// Register adds an action type. The name must match
// ^[a-z0-9]+(_[a-z0-9]+)*$ and be new to r. The type's config section is
// decoded strictly into a fresh C (defaults first, via SetDefaults when C
// or *C has it), then validated, then built.
func Register[C Config](r *Registry, name string, build BuildFunc[C]) error {
	if !typeNameRE.MatchString(name) {
		return fmt.Errorf("register action type %q: name must match %s", name, typeNameRE)
	}
	if _, dup := r.types[name]; dup {
		return fmt.Errorf("register action type %q: already registered", name)
	}
	if build == nil {
		return fmt.Errorf("register action type %q: nil build function", name)
	}
	r.types[name] = entry{
		decode: func(raw map[string]any, path string) (Config, error) {
			var c C
			ptr := any(&c)
			if d, ok := ptr.(config.Defaulter); ok {
				d.SetDefaults()
			}
			if err := config.Decode(raw, ptr, path); err != nil {
				return nil, err
			}
			if err := c.Validate(); err != nil {
				return nil, config.Prefix(path, err)
			}
			return c, nil
		},
		build: func(ctx context.Context, cfg Config, deps Deps) (Action, error) {
			return build(ctx, cfg.(C), deps)
		},
	}
	return nil
}

// MustRegister is Register that panics; use it only at start-up.
func MustRegister[C Config](r *Registry, name string, build BuildFunc[C]) {
	if err := Register(r, name, build); err != nil {
		panic(err)
	}
}

// Names returns the registered type names, sorted.
func (r *Registry) Names() []string {
	out := make([]string, 0, len(r.types))
	for n := range r.types {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Spec is a decoded, validated action section, ready to build.
type Spec struct {
	// Type is the action type name.
	Type string
	// Path is the key path of the section, e.g. "observers.x.actions[0]".
	Path string
	// Hash identifies the section's canonical config: the same fields
	// and values give the same hash, whatever their order in the file.
	Hash string
	// Config is the typed config.
	Config Config
}

// Decode decodes and validates one action section at path.
func (r *Registry) Decode(path string, raw config.Action) (*Spec, error) {
	typ := raw.Type()
	e, ok := r.types[typ]
	if !ok {
		if typ == "" {
			return nil, config.Errorf(path+".type", "is required (one of %s)", strings.Join(r.Names(), ", "))
		}
		return nil, config.Errorf(path+".type", "unknown action type %q (known: %s)", typ, strings.Join(r.Names(), ", "))
	}
	// "breaker" tunes the action's endpoint breaker, not what the action
	// does: config.Validate checks it, and it is left out of the hash so
	// that tuning it keeps the action's cached successes (and the ones a
	// dead letter records).
	fields := make(map[string]any, len(raw))
	hashed := make(map[string]any, len(raw))
	for k, v := range raw {
		if k != config.ActionBreakerKey {
			hashed[k] = v
			if k != "type" {
				fields[k] = v
			}
		}
	}
	cfg, err := e.decode(fields, path)
	if err != nil {
		return nil, err
	}
	return &Spec{Type: typ, Path: path, Hash: Hash(hashed), Config: cfg}, nil
}

// Build builds the action of a decoded spec.
func (r *Registry) Build(ctx context.Context, s *Spec, deps Deps) (Action, error) {
	a, err := r.types[s.Type].build(ctx, s.Config, deps)
	if err != nil {
		return nil, fmt.Errorf("%s (%s): %w", s.Path, s.Type, err)
	}
	return a, nil
}

// Hash returns a stable hash of an action section: SHA-256 of its
// canonical JSON (encoding/json sorts map keys), hex, first 16 bytes.
func Hash(raw map[string]any) string {
	b, err := json.Marshal(raw)
	if err != nil {
		b = fmt.Appendf(nil, "%#v", raw) // unreachable for TOML-decoded values
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}
