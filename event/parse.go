package event

import (
	"bytes"
	"encoding/binary"
	"maps"
	"math"
	"math/bits"
	"strconv"
	"sync"
	"sync/atomic"
	"unicode/utf16"
	"unicode/utf8"
)

// The fast path of Decode: one pass over the envelope, building data's
// values with their final number types, for the envelopes producers and
// millrace itself write — the field names as documented, each once,
// valid JSON and valid UTF-8. Anything else (a syntax error, a field of
// the wrong JSON kind, a key that only matches a field without regard to
// case, a lone surrogate escape, very deep nesting) makes it give up, and
// Decode takes encoding/json's path, whose errors and corner cases are
// the reference: the fast path only has to agree with it on what it
// accepts, which FuzzFastPathAgrees checks.
//
// encoding/json reads a 500-byte text field byte by byte three times
// (scanning the value, rescanning the literal, unquoting it); here it is
// read once.

// maxFastDepth bounds the nesting the fast path follows.
const maxFastDepth = 1000

type parser struct {
	b     []byte
	i     int
	depth int
}

// fastWire parses b (a trimmed JSON object) into w, whose Data and
// Changes then hold normalized values; it returns false when the fast
// path gives up, leaving w partly filled.
func fastWire(b []byte, w *wire) bool {
	p := parser{b: b}
	if !p.consume('{') {
		return false
	}
	var seen uint16
	p.ws()
	if p.consume('}') {
		return p.end()
	}
	for {
		p.ws()
		key, ok := p.key()
		if !ok {
			return false
		}
		p.ws()
		if !p.consume(':') {
			return false
		}
		p.ws()
		f := fieldIndex(key)
		if f < 0 || seen&(1<<f) != 0 {
			return false
		}
		seen |= 1 << f
		if !p.field(w, f) {
			return false
		}
		p.ws()
		if p.consume(',') {
			continue
		}
		if p.consume('}') {
			return p.end()
		}
		return false
	}
}

// The envelope's fields, in wire order.
const (
	fID = iota
	fType
	fEntity
	fEntityID
	fData
	fChanges
	fUserID
	fTenantID
	fTimestamp
	fSeq
	fSource
)

func fieldIndex(k []byte) int {
	// A switch on string(k) does not copy k.
	switch string(k) {
	case "id":
		return fID
	case "event_type":
		return fType
	case "entity_type":
		return fEntity
	case "entity_id":
		return fEntityID
	case "data":
		return fData
	case "changes":
		return fChanges
	case "user_id":
		return fUserID
	case "tenant_id":
		return fTenantID
	case "timestamp":
		return fTimestamp
	case "seq":
		return fSeq
	case "source":
		return fSource
	}
	return -1
}

// field parses the value of field f into w, as encoding/json would
// decode it into wire's field.
func (p *parser) field(w *wire, f int) bool {
	switch f {
	case fID, fType, fEntity, fTimestamp, fSource:
		if p.null() {
			return true // the field stays as it is, as encoding/json leaves it
		}
		raw, ok := p.strRaw()
		if !ok {
			return false
		}
		// The names that repeat from event to event are interned.
		switch f {
		case fID:
			w.ID = string(raw)
		case fType:
			w.Type = intern(raw)
		case fEntity:
			w.Entity = intern(raw)
		case fTimestamp:
			w.Timestamp = string(raw)
		default:
			w.Source = intern(raw)
		}
		return true
	case fEntityID, fUserID, fTenantID, fSeq:
		// Kept raw, as wire's json.RawMessage; stringish and the seq
		// check read them.
		start := p.i
		if !p.skipScalar() {
			return false
		}
		raw := p.b[start:p.i]
		switch f {
		case fEntityID:
			w.EntityID = raw
		case fUserID:
			w.UserID = raw
		case fTenantID:
			w.TenantID = raw
		default:
			w.Seq = raw
		}
		return true
	case fData, fChanges:
		if p.null() {
			return true
		}
		if p.i >= len(p.b) || p.b[p.i] != '{' {
			return false // not an object: encoding/json words the error
		}
		v, ok := p.value()
		if !ok {
			return false
		}
		if f == fData {
			w.Data = v
			return true
		}
		for _, c := range v.(map[string]any) {
			if _, ok := c.(map[string]any); !ok {
				return false
			}
		}
		w.Changes = v
		return true
	}
	return false
}

// end reports whether nothing follows the top-level object.
func (p *parser) end() bool { return p.i == len(p.b) }

func (p *parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) consume(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *parser) literal(s string) bool {
	if bytes.HasPrefix(p.b[p.i:], []byte(s)) {
		p.i += len(s)
		return true
	}
	return false
}

func (p *parser) null() bool { return p.literal("null") }

// skipScalar passes over a string, a number or null.
func (p *parser) skipScalar() bool {
	if p.i >= len(p.b) {
		return false
	}
	switch c := p.b[p.i]; {
	case c == '"':
		_, ok := p.strRaw()
		return ok
	case c == 'n':
		return p.null()
	case c == '-' || c >= '0' && c <= '9':
		return p.skipNumber()
	}
	return false
}

// value parses any JSON value, with numbers as normalize leaves them.
func (p *parser) value() (any, bool) {
	if p.i >= len(p.b) {
		return nil, false
	}
	switch c := p.b[p.i]; {
	case c == '"':
		return p.str()
	case c == '{':
		return p.object()
	case c == '[':
		return p.array()
	case c == 't':
		return true, p.literal("true")
	case c == 'f':
		return false, p.literal("false")
	case c == 'n':
		return nil, p.null()
	case c == '-' || c >= '0' && c <= '9':
		start := p.i
		if !p.skipNumber() {
			return nil, false
		}
		return numberValue(p.b[start:p.i]), true
	}
	return nil, false
}

func (p *parser) object() (any, bool) {
	if p.depth++; p.depth > maxFastDepth {
		return nil, false
	}
	defer func() { p.depth-- }()
	p.i++
	m := map[string]any{}
	p.ws()
	if p.consume('}') {
		return m, true
	}
	for {
		p.ws()
		k, ok := p.str()
		if !ok {
			return nil, false
		}
		p.ws()
		if !p.consume(':') {
			return nil, false
		}
		p.ws()
		v, ok := p.value()
		if !ok {
			return nil, false
		}
		m[k] = v // the last of duplicate keys wins, as in encoding/json
		p.ws()
		if p.consume(',') {
			continue
		}
		return m, p.consume('}')
	}
}

func (p *parser) array() (any, bool) {
	if p.depth++; p.depth > maxFastDepth {
		return nil, false
	}
	defer func() { p.depth-- }()
	p.i++
	// Never nil, as encoding/json makes it.
	a := make([]any, 0)
	p.ws()
	if p.consume(']') {
		return a, true
	}
	for {
		p.ws()
		v, ok := p.value()
		if !ok {
			return nil, false
		}
		a = append(a, v)
		p.ws()
		if p.consume(',') {
			continue
		}
		return a, p.consume(']')
	}
}

// skipNumber passes over a number as the JSON grammar has it.
func (p *parser) skipNumber() bool {
	end := numberEnd(p.b, p.i)
	if end < 0 {
		return false
	}
	p.i = end
	return true
}

// IsNumber reports whether b is exactly one JSON number.
func IsNumber(b []byte) bool { return numberEnd(b, 0) == len(b) }

// numberEnd returns where the JSON number that starts at b[i] ends, or
// -1 when none starts there.
func numberEnd(b []byte, i int) int {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(b, i)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		if d := digits(b, i+1); d > i+1 {
			i = d
		} else {
			return -1
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if d := digits(b, i); d > i {
			i = d
		} else {
			return -1
		}
	}
	return i
}

// digits returns the end of the run of decimal digits at b[i].
func digits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// numberValue is normalize's rule for one number: int64 when it is an
// integer that fits, else float64, else its text.
func numberValue(b []byte) any {
	if n, ok := smallInt(b); ok {
		return n
	}
	text := string(b)
	if n, err := strconv.ParseInt(text, 10, 64); err == nil {
		return n
	}
	if f, err := strconv.ParseFloat(text, 64); err == nil && !math.IsInf(f, 0) {
		return f
	}
	return text
}

// str parses a string. Control characters, invalid UTF-8 and lone
// surrogate escapes make it give up (encoding/json rejects the first and
// replaces the others).
// key reads an object key in place, without a copy: the envelope's keys
// are read only to be matched. A key with escapes is unescaped into a
// copy.
func (p *parser) key() ([]byte, bool) {
	b := p.b
	if p.i >= len(b) || b[p.i] != '"' {
		return nil, false
	}
	if i := plain(b, p.i+1); i < len(b) {
		if b[i] == '"' {
			k := b[p.i+1 : i]
			p.i = i + 1
			return k, true
		}
		return p.strRaw()
	}
	return nil, false
}

func (p *parser) str() (string, bool) {
	raw, ok := p.strRaw()
	if !ok {
		return "", false
	}
	return string(raw), true
}

// strRaw parses a string and returns its unescaped bytes: a slice of
// p.b when it has no escapes, a new buffer otherwise.
func (p *parser) strRaw() ([]byte, bool) {
	b := p.b
	if p.i >= len(b) || b[p.i] != '"' {
		return nil, false
	}
	start := p.i + 1
	i := start
	for {
		if i = plain(b, i); i >= len(b) {
			return nil, false
		}
		switch c := b[i]; {
		case c == '"':
			p.i = i + 1
			return b[start:i:i], true
		case c == '\\':
			return p.escaped(start, i)
		case c < 0x20:
			return nil, false
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				return nil, false
			}
			i += size
		}
	}
}

// plain returns the index of the first byte of b from i on that a
// string's plain ASCII run stops at: a quote, a backslash, a control
// byte or a byte of a multi-byte UTF-8 sequence; len(b) if there is
// none. It tests eight bytes at a time, as data's text fields are long
// and mostly plain.
func plain(b []byte, i int) int {
	const ones, tops = 0x0101010101010101, 0x8080808080808080
	for ; i+8 <= len(b); i += 8 {
		x := binary.LittleEndian.Uint64(b[i:])
		q, s := x^(ones*'"'), x^(ones*'\\')
		// A byte's top bit is set in m where that byte is zero in q or
		// s, is below 0x20, or has its own top bit set. A subtraction's
		// borrow can mark a byte past one that truly matches, never
		// before it, so the lowest mark is the first stop.
		m := ((q-ones)&^q | (s-ones)&^s | (x-ones*0x20)&^x | x) & tops
		if m != 0 {
			return i + bits.TrailingZeros64(m)/8
		}
	}
	for ; i < len(b); i++ {
		if c := b[i]; c == '"' || c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			return i
		}
	}
	return i
}

// escaped finishes a string that has escapes, from its first backslash
// at i.
func (p *parser) escaped(start, i int) ([]byte, bool) {
	b := p.b
	out := make([]byte, 0, i-start+16)
	out = append(out, b[start:i]...)
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			p.i = i + 1
			return out, true
		case c == '\\':
			if i+1 >= len(b) {
				return nil, false
			}
			switch e := b[i+1]; e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r, ok := hex4(b, i+2)
				if !ok {
					return nil, false
				}
				i += 6
				if utf16.IsSurrogate(r) {
					if i+1 >= len(b) || b[i] != '\\' || b[i+1] != 'u' {
						return nil, false
					}
					r2, ok := hex4(b, i+2)
					if !ok {
						return nil, false
					}
					if r = utf16.DecodeRune(r, r2); r == utf8.RuneError {
						return nil, false
					}
					i += 6
				}
				out = utf8.AppendRune(out, r)
				continue
			default:
				return nil, false
			}
			i += 2
		case c < 0x20:
			return nil, false
		case c < utf8.RuneSelf:
			out = append(out, c)
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				return nil, false
			}
			out = append(out, b[i:i+size]...)
			i += size
		}
	}
	return nil, false
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// smallInt reads an integer of at most 18 digits, which always fits an
// int64, without the string strconv needs.
func smallInt(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// interned holds the strings of the envelope fields that repeat from
// event to event (event_type, entity_type, source), so that decoding
// them does not allocate. It is copied on write, which readers do not
// wait for, and bounded: past maxInterned names, or for a name longer
// than maxInternLen, decoding allocates as before.
var (
	internMu sync.Mutex
	interned atomic.Pointer[map[string]string]
)

const (
	maxInterned  = 1024
	maxInternLen = 128
)

func intern(b []byte) string {
	if m := interned.Load(); m != nil {
		if s, ok := (*m)[string(b)]; ok { // the lookup does not copy b
			return s
		}
	}
	s := string(b)
	if len(b) > maxInternLen {
		return s
	}
	internMu.Lock()
	defer internMu.Unlock()
	old := interned.Load()
	var m map[string]string
	if old == nil {
		m = map[string]string{s: s}
	} else {
		if len(*old) >= maxInterned {
			return s
		}
		m = make(map[string]string, len(*old)+1)
		maps.Copy(m, *old)
		m[s] = s
	}
	interned.Store(&m)
	return s
}
