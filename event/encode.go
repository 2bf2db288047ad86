package event

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Encode returns the JSON envelope of e: the bytes json.Marshal gives,
// written without reflection for the values Decode and capture produce
// (strings, int64, float64, bools, nil, maps and slices of them). Any
// other value in data or changes goes through json.Marshal. Every
// delivery of the webhook action and every publish encodes an event, and
// json.Marshal (reflection, and sorting each map's keys through reflect
// values) was a tenth of the webhook's CPU.
func Encode(e *Event) ([]byte, error) {
	if b, ok := appendEvent(make([]byte, 0, sizeHint(e)), e); ok {
		return b, nil
	}
	return json.Marshal(e)
}

// sizeHint is about the length of e's encoding when nothing in it needs
// escaping, so that the buffer is allocated once.
func sizeHint(e *Event) int {
	n := 200 + len(e.ID) + len(e.Type) + len(e.Entity) + len(e.EntityID) + len(e.UserID) + len(e.TenantID) + len(e.Source)
	for k, v := range e.Data {
		n += len(k) + 24
		if s, ok := v.(string); ok {
			n += len(s)
		}
	}
	return n + 64*len(e.Changes)
}

// appendEvent appends e as json.Marshal encodes it; false when a value
// needs json.Marshal.
func appendEvent(b []byte, e *Event) ([]byte, bool) {
	b = appendHead(b, e.ID, e.Type, e.Entity, e.EntityID)
	var ok bool
	if e.Data == nil {
		b = append(b, "null"...)
	} else if b, ok = appendObject(b, e.Data); !ok {
		return nil, false
	}
	if len(e.Changes) > 0 {
		b = append(b, `,"changes":{`...)
		for i, k := range sortedKeys(e.Changes) {
			if i > 0 {
				b = append(b, ',')
			}
			b = AppendString(b, k)
			c := e.Changes[k]
			b = append(b, `:{"old":`...)
			if b, ok = appendValue(b, c.Old); !ok {
				return nil, false
			}
			b = append(b, `,"new":`...)
			if b, ok = appendValue(b, c.New); !ok {
				return nil, false
			}
			b = append(b, '}')
		}
		b = append(b, '}')
	}
	b = appendOwner(b, e.UserID, e.TenantID)
	b = append(b, `,"timestamp":`...)
	if b, ok = appendTime(b, e.Timestamp); !ok {
		return nil, false
	}
	return appendTail(b, e.Seq, e.Source), true
}

func appendValue(b []byte, v any) ([]byte, bool) {
	switch t := v.(type) {
	case nil:
		return append(b, "null"...), true
	case string:
		return AppendString(b, t), true
	case bool:
		return strconv.AppendBool(b, t), true
	case int64:
		return strconv.AppendInt(b, t, 10), true
	case int:
		return strconv.AppendInt(b, int64(t), 10), true
	case float64:
		return appendFloat(b, t)
	case map[string]any:
		if t == nil {
			return append(b, "null"...), true
		}
		return appendObject(b, t)
	case []any:
		if t == nil {
			return append(b, "null"...), true
		}
		b = append(b, '[')
		var ok bool
		for i, x := range t {
			if i > 0 {
				b = append(b, ',')
			}
			if b, ok = appendValue(b, x); !ok {
				return nil, false
			}
		}
		return append(b, ']'), true
	}
	return nil, false
}

func appendObject(b []byte, m map[string]any) ([]byte, bool) {
	b = append(b, '{')
	var ok bool
	for i, k := range sortedKeys(m) {
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendString(b, k)
		b = append(b, ':')
		if b, ok = appendValue(b, m[k]); !ok {
			return nil, false
		}
	}
	return append(b, '}'), true
}

// sortedKeys returns m's keys in the order json.Marshal writes them.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// appendFloat is encoding/json's float64 encoder: like %g, with the
// exponent cut-offs of ES6 and exponents not padded to two digits.
// NaN and infinities are not JSON (json.Marshal fails on them).
func appendFloat(b []byte, f float64) ([]byte, bool) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return nil, false
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-09 becomes e-9
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, true
}

// appendTime is time.Time's MarshalJSON (RFC 3339 with nanoseconds), for
// the times it accepts: years 0 to 9999 and zone offsets within a day in
// whole minutes.
func appendTime(b []byte, t time.Time) ([]byte, bool) {
	if y := t.Year(); y < 0 || y > 9999 {
		return nil, false
	}
	if _, off := t.Zone(); off%60 != 0 || off <= -24*3600 || off >= 24*3600 {
		return nil, false
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), true
}

const hexDigits = "0123456789abcdef"

// htmlSafe holds the ASCII characters a JSON string carries as they are
// when HTML characters are escaped too: all but the control characters,
// the quote, the backslash, <, > and &.
var htmlSafe = func() (t [utf8.RuneSelf]bool) {
	for c := range utf8.RuneSelf {
		t[c] = c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// AppendString appends s as a JSON string, escaped as json.Marshal
// escapes it (encoding/json's string encoder with HTML escaping): <, >
// and & as \u003c, \u003e and \u0026, control characters escaped,
// invalid UTF-8 as \ufffd, U+2028 and U+2029 escaped.
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if htmlSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
