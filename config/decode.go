package config

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Error is one configuration problem at one key path, such as
// "observers.order_shipped.actions[0].url".
type Error struct {
	Path string
	Msg  string
}

func (e *Error) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Errorf returns an *Error for path.
func Errorf(path, format string, args ...any) error {
	return &Error{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Join joins path segments: Join("a", "b") is "a.b", Join("", "b") is "b".
func Join(path, key string) string {
	if key == "" {
		key = `""` // an empty quoted key still gets a visible path
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

// Index returns path[i].
func Index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

// URLKey names where a URL came from, for messages about its service:
// URLKey("nats", "url", "") is "nats.url", and URLKey("sources[0]",
// "postgres_url", "ORDERS_DB_URL") is
// "sources[0].postgres_url_env=ORDERS_DB_URL", since the user fixes a URL
// read from a variable in that variable.
func URLKey(path, key, envName string) string {
	if envName != "" {
		return Join(path, key+"_env") + "=" + envName
	}
	return Join(path, key)
}

// Prefix puts path in front of the paths of err's *Error parts that
// are relative to it (a part without a path gets path itself), and makes
// any other error an *Error at path: how the checks of a nested section,
// which know only their own keys, report under the section's path.
func Prefix(path string, err error) error {
	var out []error
	for _, e := range Errors(err) {
		var ce *Error
		if errors.As(e, &ce) {
			if ce.Path == "" {
				ce = &Error{Path: path, Msg: ce.Msg}
			} else if !strings.HasPrefix(ce.Path, path) {
				ce = &Error{Path: Join(path, ce.Path), Msg: ce.Msg}
			}
			out = append(out, ce)
			continue
		}
		out = append(out, &Error{Path: path, Msg: e.Error()})
	}
	return errors.Join(out...)
}

// Errors flattens a joined error into its *Error parts (and any other
// errors as they are), in path order.
func Errors(err error) []error {
	var out []error
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		if e != nil {
			out = append(out, e)
		}
	}
	walk(err)
	sort.SliceStable(out, func(i, j int) bool { return pathOf(out[i]) < pathOf(out[j]) })
	return out
}

func pathOf(err error) string {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.Path
	}
	return ""
}

// Defaulter is implemented by config structs that fill their own defaults.
// The decoder calls SetDefaults on every struct value it creates (a map
// entry, a list element) before decoding into it.
type Defaulter interface{ SetDefaults() }

var (
	durationType = reflect.TypeFor[Duration]()
	textType     = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// Decode decodes raw, a tree of maps, lists and scalars as TOML and the
// environment produce, into out, a pointer to a struct whose fields carry
// `koanf:"name"` tags. Fields already set in out are kept unless raw sets
// them. Every problem is returned, joined, each an *Error with its path
// below prefix. Action types use it to decode their own sections.
func Decode(raw map[string]any, out any, prefix string) error {
	v := reflect.ValueOf(out)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("config.Decode: out must be a pointer to a struct, got %T", out)
	}
	var errs []error
	decodeValue(prefix, raw, v.Elem(), &errs)
	return errors.Join(errs...)
}

func decodeValue(path string, in any, v reflect.Value, errs *[]error) {
	bad := func(format string, args ...any) { *errs = append(*errs, Errorf(path, format, args...)) }
	t := v.Type()
	if t == durationType {
		s, ok := in.(string)
		if !ok {
			bad("must be a duration string like \"30s\" or \"5m\", got %s", describe(in))
			return
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			bad("bad duration %q: use a number with a unit, like \"500ms\", \"30s\" or \"5m\"", s)
			return
		}
		v.Set(reflect.ValueOf(Duration(d)))
		return
	}
	if reflect.PointerTo(t).Implements(textType) && t.Kind() != reflect.String {
		s, ok := in.(string)
		if !ok {
			bad("must be a string, got %s", describe(in))
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
			bad("%v", err)
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := in.(map[string]any)
		if !ok {
			bad("must be a table, got %s", describe(in))
			return
		}
		fields := structFields(t)
		keys := sortedKeys(m)
		for _, k := range keys {
			idx, ok := fields[k]
			if !ok {
				msg := fmt.Sprintf("unknown key %q", k)
				if s := suggest(k, fieldNames(fields)); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				*errs = append(*errs, Errorf(Join(path, k), "%s", msg))
				continue
			}
			decodeValue(Join(path, k), m[k], v.Field(idx), errs)
		}
	case reflect.Map:
		m, ok := in.(map[string]any)
		if !ok {
			bad("must be a table, got %s", describe(in))
			return
		}
		if t.Elem().Kind() == reflect.Interface {
			v.Set(reflect.ValueOf(m).Convert(t))
			return
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(t))
		}
		for _, k := range sortedKeys(m) {
			elem := reflect.New(t.Elem()).Elem()
			if old := v.MapIndex(reflect.ValueOf(k)); old.IsValid() {
				elem.Set(old)
			} else {
				setDefaults(elem)
			}
			decodeValue(Join(path, k), m[k], elem, errs)
			v.SetMapIndex(reflect.ValueOf(k), elem)
		}
	case reflect.Slice:
		var list []any
		switch x := in.(type) {
		case []any:
			list = x
		case []map[string]any:
			for _, e := range x {
				list = append(list, e)
			}
		case string:
			if t.Elem().Kind() != reflect.String {
				bad("must be a list, got %s", describe(in))
				return
			}
			// Lists of strings may come from the environment as "a,b,c".
			for _, s := range strings.Split(x, ",") {
				if s = strings.TrimSpace(s); s != "" {
					list = append(list, s)
				}
			}
		default:
			bad("must be a list, got %s", describe(in))
			return
		}
		s := reflect.MakeSlice(t, len(list), len(list))
		for i, e := range list {
			setDefaults(s.Index(i))
			decodeValue(Index(path, i), e, s.Index(i), errs)
		}
		v.Set(s)
	case reflect.Interface:
		v.Set(reflect.ValueOf(in))
	case reflect.String:
		s, ok := in.(string)
		if !ok {
			bad("must be a string, got %s", describe(in))
			return
		}
		v.SetString(s)
	case reflect.Bool:
		switch x := in.(type) {
		case bool:
			v.SetBool(x)
		case string:
			b, err := strconv.ParseBool(x)
			if err != nil {
				bad("must be true or false, got %q", x)
				return
			}
			v.SetBool(b)
		default:
			bad("must be true or false, got %s", describe(in))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := toInt(in)
		if !ok || v.OverflowInt(n) {
			bad("must be an integer, got %s", describe(in))
			return
		}
		v.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := toInt(in)
		if !ok || n < 0 || v.OverflowUint(uint64(n)) {
			bad("must be a non-negative integer, got %s", describe(in))
			return
		}
		v.SetUint(uint64(n))
	case reflect.Float32, reflect.Float64:
		switch x := in.(type) {
		case float64:
			v.SetFloat(x)
		case int64:
			v.SetFloat(float64(x))
		case int:
			v.SetFloat(float64(x))
		case string:
			f, err := strconv.ParseFloat(x, 64)
			if err != nil {
				bad("must be a number, got %q", x)
				return
			}
			v.SetFloat(f)
		default:
			bad("must be a number, got %s", describe(in))
		}
	default:
		bad("cannot decode into %s", t)
	}
}

func setDefaults(v reflect.Value) {
	if v.CanAddr() {
		if d, ok := v.Addr().Interface().(Defaulter); ok {
			d.SetDefaults()
		}
	}
}

func toInt(in any) (int64, bool) {
	switch x := in.(type) {
	case int64:
		return x, true
	case int:
		return int64(x), true
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return int64(x), true
		}
	case string:
		n, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64)
		return n, err == nil
	}
	return 0, false
}

func describe(in any) string {
	switch x := in.(type) {
	case nil:
		return "nothing"
	case string:
		return fmt.Sprintf("the string %q", x)
	case bool:
		return fmt.Sprintf("the boolean %v", x)
	case int64, int, float64:
		return fmt.Sprintf("the number %v", x)
	case map[string]any:
		return "a table"
	case []any, []map[string]any:
		return "a list"
	}
	return fmt.Sprintf("a %T", in)
}

// structFields maps each field's key (its koanf tag) to its index.
func structFields(t reflect.Type) map[string]int {
	out := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("koanf")
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		out[tag] = i
	}
	return out
}

// Keys returns the valid keys of a config struct type, sorted.
func Keys(t reflect.Type) []string { return fieldNames(structFields(t)) }

func fieldNames(f map[string]int) []string {
	out := make([]string, 0, len(f))
	for k := range f {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func sortedKeys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// suggest returns the candidate nearest to key, if it is near enough to be
// a likely typo.
func suggest(key string, candidates []string) string {
	best, bestD := "", math.MaxInt
	for _, c := range candidates {
		if d := levenshtein(strings.ToLower(key), c); d < bestD {
			best, bestD = c, d
		}
	}
	if bestD <= max(2, len(key)/3) {
		return best
	}
	return ""
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Duration is a time.Duration written in config as a string like "30s".
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats d like time.Duration does.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText writes d as "30s", so printed configs round-trip.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }
