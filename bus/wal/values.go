package wal

import (
	"bytes"
	"encoding/json"
	"strings"
	"unsafe"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/millrace/millrace/event"
)

// types knows the element type of PostgreSQL's built-in array types.
var types = pgtype.NewMap()

// Type OIDs whose to_jsonb form is not a JSON string.
const (
	oidBool        = 16
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidOID         = 26
	oidJSON        = 114
	oidFloat4      = 700
	oidFloat8      = 701
	oidTime        = 1083
	oidTimestamp   = 1114
	oidTimestamptz = 1184
	oidTimetz      = 1266
	oidNumeric     = 1700
	oidJSONB       = 3802
)

// appendValue appends the JSON form of a column's text value, the form
// to_jsonb gives it, which is what the trigger capture records: numbers
// as numbers (NaN and infinities as strings), booleans, json and jsonb
// embedded, timestamps in ISO 8601 with a 'T', arrays of these as JSON
// arrays; every other type as the string of its text output. Composite
// types are the exception: to_jsonb makes them objects, here they stay
// the string of their text output (docs/capture.md).
func appendValue(dst []byte, oid uint32, text []byte) []byte {
	switch oid {
	case oidInt2, oidInt4, oidInt8, oidOID, oidFloat4, oidFloat8, oidNumeric:
		if event.IsNumber(text) { // numeric prints NaN and the infinities too
			return append(dst, text...)
		}
		return appendString(dst, string(text)) // NaN, Infinity
	case oidBool:
		if len(text) > 0 && text[0] == 't' {
			return append(dst, "true"...)
		}
		return append(dst, "false"...)
	case oidJSON, oidJSONB:
		b := bytes.NewBuffer(dst)
		if err := json.Compact(b, text); err == nil {
			return b.Bytes()
		}
		return appendText(dst, text)
	case oidTimestamp, oidTimestamptz:
		return appendISO(dst, text, true)
	case oidTimetz:
		return appendISO(dst, text, false)
	}
	if t, ok := types.TypeForOID(oid); ok {
		if ac, ok := t.Codec.(*pgtype.ArrayCodec); ok && ac.ElementType != nil {
			if out, ok := appendArray(dst, ac.ElementType.OID, string(text)); ok {
				return out
			}
		}
	}
	return appendText(dst, text)
}

func appendString(dst []byte, s string) []byte { return event.AppendString(dst, s) }

// appendText appends text as a JSON string without copying it into a
// string first (a copy of every text value of every change): the
// string is only read during the call.
func appendText(dst, text []byte) []byte {
	return event.AppendString(dst, unsafe.String(unsafe.SliceData(text), len(text)))
}

// appendISO appends a timestamp's (date set) or a time's text output
// (DateStyle ISO) as to_jsonb writes it: "2024-01-02 03:04:05.5+01"
// becomes "2024-01-02T03:04:05.5+01:00". It rewrites the quoted copy in
// place: the text has nothing to escape.
func appendISO(dst, text []byte, date bool) []byte {
	start := len(dst) + 1
	dst = appendText(dst, text)
	v := dst[start : len(dst)-1]
	if len(v) != len(text) { // escaped: not a timestamp's output
		return dst
	}
	if date && bytes.IndexByte(v, ' ') == 10 {
		v[10] = 'T'
	}
	n := len(v)
	if !bytes.HasSuffix(v, []byte(" BC")) && n >= 3 && (v[n-3] == '+' || v[n-3] == '-') &&
		isDigit(v[n-2]) && isDigit(v[n-1]) && bytes.IndexByte(v[:n-3], ':') >= 0 {
		dst = append(dst[:len(dst)-1], `:00"`...)
	}
	return dst
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// appendArray parses an array's text output ({1,2}, {{"a b",NULL}}) and
// appends it as a JSON array, each element converted by appendValue. ok
// is false for a text it does not understand, which then stays a string.
func appendArray(dst []byte, elem uint32, s string) ([]byte, bool) {
	if strings.HasPrefix(s, "[") { // explicit bounds: [0:1]={...}
		i := strings.Index(s, "=")
		if i < 0 {
			return dst, false
		}
		s = s[i+1:]
	}
	out, rest, ok := parseArray(dst, elem, s)
	if !ok || rest != "" {
		return dst, false
	}
	return out, true
}

func parseArray(dst []byte, elem uint32, s string) ([]byte, string, bool) {
	if s == "" || s[0] != '{' {
		return dst, s, false
	}
	s = s[1:]
	dst = append(dst, '[')
	if strings.HasPrefix(s, "}") {
		return append(dst, ']'), s[1:], true
	}
	for first := true; ; first = false {
		if !first {
			dst = append(dst, ',')
		}
		var ok bool
		switch {
		case strings.HasPrefix(s, "{"):
			if dst, s, ok = parseArray(dst, elem, s); !ok {
				return dst, s, false
			}
		case strings.HasPrefix(s, `"`):
			var b strings.Builder
			i := 1
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				b.WriteByte(s[i])
			}
			if i >= len(s) {
				return dst, s, false
			}
			dst = appendValue(dst, elem, []byte(b.String()))
			s = s[i+1:]
		default:
			i := strings.IndexAny(s, ",}")
			if i < 0 {
				return dst, s, false
			}
			if v := s[:i]; v == "NULL" {
				dst = append(dst, "null"...)
			} else {
				dst = appendValue(dst, elem, []byte(v))
			}
			s = s[i:]
		}
		if s == "" {
			return dst, s, false
		}
		if s[0] == '}' {
			return append(dst, ']'), s[1:], true
		}
		if s[0] != ',' {
			return dst, s, false
		}
		s = s[1:]
	}
}
