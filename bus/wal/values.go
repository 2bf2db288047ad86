package wal

import (
	"bytes"
	"encoding/json"
	"strings"

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
		return appendString(dst, string(text))
	case oidTimestamp, oidTimestamptz:
		return appendString(dst, isoTimestamp(string(text)))
	case oidTimetz:
		return appendString(dst, isoOffset(string(text)))
	}
	if t, ok := types.TypeForOID(oid); ok {
		if ac, ok := t.Codec.(*pgtype.ArrayCodec); ok && ac.ElementType != nil {
			if out, ok := appendArray(dst, ac.ElementType.OID, string(text)); ok {
				return out
			}
		}
	}
	return appendString(dst, string(text))
}

func appendString(dst []byte, s string) []byte { return event.AppendString(dst, s) }

// isoTimestamp turns "2024-01-02 03:04:05.5+01" (DateStyle ISO) into
// "2024-01-02T03:04:05.5+01:00", as to_jsonb writes it.
func isoTimestamp(s string) string {
	if i := strings.IndexByte(s, ' '); i == 10 {
		s = s[:i] + "T" + s[i+1:]
	}
	return isoOffset(s)
}

// isoOffset writes a trailing "+01" or "-05" offset as "+01:00".
func isoOffset(s string) string {
	if strings.HasSuffix(s, " BC") {
		return s
	}
	n := len(s)
	if n >= 3 && (s[n-3] == '+' || s[n-3] == '-') && isDigit(s[n-2]) && isDigit(s[n-1]) && strings.ContainsRune(s[:n-3], ':') {
		return s + ":00"
	}
	return s
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
