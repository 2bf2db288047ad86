package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// Type is the kind of change: INSERT, UPDATE, DELETE, READ or CUSTOM.
type Type string

// The event types. The set is closed: any other value is rejected.
const (
	Insert Type = "INSERT"
	Update Type = "UPDATE"
	Delete Type = "DELETE"
	Custom Type = "CUSTOM"
	// Read is a row that existed already, emitted by a backfill: its
	// image as it was read, not a change. Observers that filter on event
	// type see it only when they ask for READ (or "*").
	Read Type = "READ"
)

// Types lists every valid Type, in a stable order.
var Types = []Type{Insert, Update, Delete, Custom, Read}

// TypeList is Types as "INSERT, UPDATE, DELETE, CUSTOM, READ", for
// messages.
var TypeList = func() string {
	s := make([]string, len(Types))
	for i, t := range Types {
		s[i] = string(t)
	}
	return strings.Join(s, ", ")
}()

// Valid reports whether t is one of the event types.
func (t Type) Valid() bool {
	switch t {
	case Insert, Update, Delete, Custom, Read:
		return true
	}
	return false
}

// Change is the old and new value of one field on UPDATE.
type Change struct {
	Old any `json:"old"`
	New any `json:"new"`
}

// Event is one change of one row (or one custom event).
type Event struct {
	// ID is the UUID of the change; it is the message UUID and the dedup key.
	ID string `json:"id"`
	// Type is INSERT, UPDATE, DELETE, READ or CUSTOM.
	Type Type `json:"event_type"`
	// Entity is the entity type, e.g. "Order".
	Entity string `json:"entity_type"`
	// EntityID is the primary key of the row, as a string.
	EntityID string `json:"entity_id"`
	// Data is the after-image (the before-image on DELETE).
	Data map[string]any `json:"data"`
	// Changes holds, on UPDATE, the changed fields with their old and new values.
	// Nil means the producer did not track changes; empty means nothing changed.
	Changes map[string]Change `json:"changes,omitempty"`
	// UserID and TenantID are the optional actor and tenant.
	UserID   string `json:"user_id,omitempty"`
	TenantID string `json:"tenant_id,omitempty"`
	// Timestamp is the commit-side time of the change.
	Timestamp time.Time `json:"timestamp"`
	// Seq is the position of the change in its source.
	Seq int64 `json:"seq,omitempty"`
	// Source names the database the change came from.
	Source string `json:"source,omitempty"`
}

// Key is the ordering key of the event: events with the same key must be
// handled in order.
func (e *Event) Key() string { return KeyOf(e.Source, e.Entity, e.EntityID) }

// KeyOf is the ordering key of an event with these fields.
func KeyOf(source, entity, entityID string) string {
	return source + "\x00" + entity + "\x00" + entityID
}

// MaxFieldLen bounds the string fields of the envelope (not data).
const MaxFieldLen = 1024

// FieldError is a validation problem with one field of the envelope.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// ErrInvalid is wrapped by every decoding and validation error, so callers
// can tell bad input from other failures with errors.Is.
var ErrInvalid = errors.New("invalid event")

// Validate checks every field and returns all problems joined, each a
// *FieldError wrapped with ErrInvalid.
func (e *Event) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %w", ErrInvalid, &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}))
	}
	switch {
	case e.ID == "":
		bad("id", "is required")
	case !isUUID(e.ID):
		bad("id", "must be a UUID, got %q", clip(e.ID))
	}
	if !e.Type.Valid() {
		if e.Type == "" {
			bad("event_type", "is required (one of %s)", TypeList)
		} else {
			bad("event_type", "unknown type %q (one of %s)", clip(string(e.Type)), TypeList)
		}
	}
	if e.Entity == "" {
		bad("entity_type", "is required")
	}
	for _, f := range []struct{ name, v string }{
		{"entity_type", e.Entity}, {"entity_id", e.EntityID}, {"user_id", e.UserID},
		{"tenant_id", e.TenantID}, {"source", e.Source},
	} {
		if len(f.v) > MaxFieldLen {
			bad(f.name, "longer than %d bytes", MaxFieldLen)
		}
	}
	if e.Changes != nil && e.Type != Update {
		bad("changes", "only allowed on UPDATE, not %s", e.Type)
	}
	if e.Seq < 0 {
		bad("seq", "must not be negative")
	}
	return errors.Join(errs...)
}

// wire mirrors Event for decoding, so that data and changes can be checked
// for their JSON shape before they are converted.
type wire struct {
	// Strings, not pointers: encoding/json leaves a string alone on
	// null, which is what a missing field gives too.
	ID       string          `json:"id"`
	Type     string          `json:"event_type"`
	Entity   string          `json:"entity_type"`
	EntityID json.RawMessage `json:"entity_id"`
	// Data and Changes are decoded in the same pass as the rest, with
	// numbers kept as json.Number until normalize: a second parse of
	// the raw bytes cost a third of Decode.
	Data      any             `json:"data"`
	Changes   any             `json:"changes"`
	UserID    json.RawMessage `json:"user_id"`
	TenantID  json.RawMessage `json:"tenant_id"`
	Timestamp string          `json:"timestamp"`
	Seq       json.RawMessage `json:"seq"`
	Source    string          `json:"source"`
}

// Decode parses one JSON envelope and validates it. Numbers in data and
// changes become int64 when they are integers that fit, float64 otherwise,
// so that 100 and 100.0 compare equal and large ids keep their precision.
// A missing timestamp is left zero; callers that accept events set it.
func Decode(b []byte) (*Event, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return nil, fmt.Errorf("%w: body must be a JSON object", ErrInvalid)
	}
	var w wire
	if fastWire(b, &w) {
		return fromWire(&w, true)
	}
	return decodeStd(b)
}

// decodeStd is Decode through encoding/json: the reference for what the
// fast path accepts, and the path of everything it does not.
func decodeStd(b []byte) (*Event, error) {
	var w wire
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&w); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: malformed JSON at byte %d: unexpected end of JSON input", ErrInvalid, len(b))
		}
		return nil, fmt.Errorf("%w: %s", ErrInvalid, jsonReason(err))
	}
	if off := dec.InputOffset(); off < int64(len(b)) {
		return nil, fmt.Errorf("%w: malformed JSON at byte %d: invalid character %q after top-level value", ErrInvalid, off+1, b[off])
	}
	return fromWire(&w, false)
}

// DecodeMany parses a JSON object or an array of objects. It returns the
// events that decoded and, index for index, the error of each that did not.
func DecodeMany(b []byte) ([]*Event, []error, error) {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '[' {
		var raws []json.RawMessage
		if err := json.Unmarshal(b, &raws); err != nil {
			return nil, nil, fmt.Errorf("%w: %s", ErrInvalid, jsonReason(err))
		}
		evs := make([]*Event, len(raws))
		errs := make([]error, len(raws))
		for i, r := range raws {
			evs[i], errs[i] = Decode(r)
		}
		return evs, errs, nil
	}
	ev, err := Decode(b)
	if err != nil {
		return nil, nil, err
	}
	return []*Event{ev}, []error{nil}, nil
}

// fromWire converts and checks a decoded envelope; normalized tells
// that data and changes hold their final number types already.
func fromWire(w *wire, normalized bool) (*Event, error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %w", ErrInvalid, &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}))
	}
	e := &Event{ID: w.ID, Type: Type(w.Type), Entity: w.Entity, Source: w.Source}
	var err error
	if e.EntityID, err = stringish(w.EntityID); err != nil {
		bad("entity_id", "%v", err)
	}
	if e.UserID, err = stringish(w.UserID); err != nil {
		bad("user_id", "%v", err)
	}
	if e.TenantID, err = stringish(w.TenantID); err != nil {
		bad("tenant_id", "%v", err)
	}
	switch d := w.Data.(type) {
	case nil:
		e.Data = map[string]any{}
	case map[string]any:
		if !normalized {
			normalize(d)
		}
		e.Data = d
	default:
		bad("data", "must be a JSON object, got %s", kindOf(d))
	}
	if w.Changes != nil {
		if m, ok := w.Changes.(map[string]any); !ok {
			bad("changes", "must be a JSON object, got %s", kindOf(w.Changes))
		} else {
			if !normalized {
				normalize(m)
			}
			e.Changes = make(map[string]Change, len(m))
			for k, v := range m {
				obj, ok := v.(map[string]any)
				if !ok {
					bad("changes."+k, "must be an object {old, new}")
					continue
				}
				e.Changes[k] = Change{Old: obj["old"], New: obj["new"]}
			}
		}
	}
	if w.Timestamp != "" {
		ts, err := time.Parse(time.RFC3339Nano, w.Timestamp)
		if err != nil {
			bad("timestamp", "must be RFC 3339, got %q", clip(w.Timestamp))
		}
		e.Timestamp = ts
	}
	if s := bytes.TrimSpace(w.Seq); len(s) > 0 && string(s) != "null" {
		// A JSON integer is what ParseInt reads; a fraction, an exponent
		// or a string is refused, as encoding/json would into an int64.
		n, err := strconv.ParseInt(string(s), 10, 64)
		if err != nil {
			bad("seq", "must be an integer, got %s", clip(string(s)))
		}
		e.Seq = n
	}
	if len(errs) > 0 {
		// Report shape errors together with any rule violations.
		return nil, errors.Join(append(errs, e.Validate())...)
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return e, nil
}

// DecodeValue decodes one JSON value with the numbers Decode gives:
// integers that fit become int64, other numbers float64 (or their text
// when they do not fit one). Capture uses it for row images.
func DecodeValue(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return normalize(v), nil
}

func normalize(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			t[k] = normalize(x)
		}
	case []any:
		for i, x := range t {
			t[i] = normalize(x)
		}
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i
		}
		if f, err := t.Float64(); err == nil && !math.IsInf(f, 0) {
			return f
		}
		return t.String()
	}
	return v
}

// stringish accepts a JSON string or number (ids are often integers) and
// returns it as a string.
func stringish(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	switch raw[0] {
	case '"':
		if s, ok := plainString(raw); ok {
			return s, nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", errors.New(jsonReason(err))
		}
		return s, nil
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		var n json.Number
		if err := json.Unmarshal(raw, &n); err != nil {
			return "", errors.New(jsonReason(err))
		}
		return n.String(), nil
	}
	return "", fmt.Errorf("must be a string or a number, got %s", jsonKind(raw))
}

// plainString returns the text of a quoted JSON string that has no
// escapes and only printable ASCII: the usual id, read without
// encoding/json.
func plainString(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[len(raw)-1] != '"' {
		return "", false
	}
	in := raw[1 : len(raw)-1]
	for _, c := range in {
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return "", false
		}
	}
	return string(in), true
}

// kindOf names the JSON kind of a decoded value.
func kindOf(v any) string {
	switch v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return "a number"
}

func jsonKind(b []byte) string {
	switch b[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

func jsonReason(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field := te.Field
		if field == "" {
			field = "value"
		}
		return fmt.Sprintf("%s: must be %s, got a JSON %s", field, te.Type, te.Value)
	}
	return "malformed JSON: " + err.Error()
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// isUUID accepts the canonical 8-4-4-4-12 hex form, in either case.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}
