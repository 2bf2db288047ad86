package event

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// agree checks that Decode (fast path first) and decodeStd (encoding/json
// alone) give the same event or the same error for b, and reports
// whether the fast path took b.
func agree(t *testing.T, b []byte) bool {
	t.Helper()
	fast, ferr := Decode(b)
	tb := trim(b)
	if len(tb) == 0 || tb[0] != '{' {
		return false // Decode refuses it before either path
	}
	std, serr := decodeStd(tb)
	if (ferr == nil) != (serr == nil) || ferr != nil && ferr.Error() != serr.Error() {
		t.Fatalf("%q: Decode error %v; encoding/json's %v", b, ferr, serr)
	}
	if !reflect.DeepEqual(fast, std) {
		t.Fatalf("%q: Decode = %#v; encoding/json gives %#v", b, fast, std)
	}
	took := fastWire(tb, new(wire))
	return took
}

// sample has every field of the envelope.
const sample = `{"id":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01","event_type":"UPDATE","entity_type":"Order","entity_id":1001,
"data":{"id":1001,"total":100.00,"big":9007199254740993,"tags":["a",2],"nested":{"n":3}},
"changes":{"status":{"old":"new","new":"shipped"}},"user_id":"7","tenant_id":"acme",
"timestamp":"2026-11-27T10:00:00.123Z","seq":42,"source":"orders_db"}`

func trim(b []byte) []byte { return []byte(strings.TrimSpace(string(b))) }

// TestFastPathAgrees runs envelopes the fast path takes and ones it must
// leave to encoding/json, and checks both paths agree on each.
func TestFastPathAgrees(t *testing.T) {
	id := `"id":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01","event_type":"INSERT","entity_type":"Order"`
	taken := []string{
		sample,
		`{}`,
		`{` + id + `,"data":{"s":"caf\u00e9 \ud83d\ude00 \n\t\"\\\/ \u0026","e":"","u":"é😀","n":[1,-0,1.5,1e3,1E-2,9223372036854775807,9223372036854775808,1e400,-1e400,[],{}],"b":[true,false,null]}}`,
		`{` + id + `,"entity_id":12.50,"user_id":null,"tenant_id":"t","seq":null,"source":null,"data":null,"changes":null}`,
		`{` + id + `,"data":{"a":1,"a":2}}`,
		` {` + id + `} `,
		"{\n\t\"id\" : \"x\" ,\r\n \"data\" : { } }",
		`{` + id + `,"seq":"x","timestamp":"yesterday","entity_id":"a\u0000"}`, // fromWire's errors, on either path
	}
	left := []string{
		`{"ID":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01"}`,
		`{` + id + `,"id":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01"}`,
		`{` + id + `,"extra":1}`,
		`{` + id + `,"data":{"s":"\ud83d"}}`,
		`{` + id + `,"data":{"s":"\udc00x"}}`,
		"{" + id + `,"data":{"s":"` + "\xff" + `"}}`,
		"{" + id + `,"data":{"s":"` + "\x01" + `"}}`,
		`{` + id + `,"data":[1]}`,
		`{` + id + `,"data":{"a":}}`,
		`{` + id + `,"data":{"a":01}}`,
		`{` + id + `,"data":{"a":1.}}`,
		`{` + id + `,"data":{"a":tru}}`,
		`{` + id + `,"entity_id":{}}`,
		`{"id":5}`,
		`{` + id + `,"changes":{"a":1}}`,
		`{` + id + `} {}`,
		`{` + id + `,}`,
		`{"id":`,
		`{` + id + `,"data":` + strings.Repeat(`[`, 1200) + strings.Repeat(`]`, 1200) + `}`,
	}
	for _, b := range taken {
		if !agree(t, []byte(b)) {
			t.Errorf("the fast path left %q to encoding/json", b)
		}
	}
	for _, b := range left {
		if agree(t, []byte(b)) {
			t.Errorf("the fast path took %q", b)
		}
	}
}

// FuzzFastPathAgrees checks, on any input, that the fast path gives what
// encoding/json gives whenever it takes the input.
func FuzzFastPathAgrees(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte(`{"id":"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01","event_type":"UPDATE","entity_type":"A","changes":{"x":{"old":1,"new":"\u00e9"}},"data":{"x":[1e400,-0.0,{"":null}]}}`))
	f.Add([]byte(`{"data":{"s":"\ud83d\ude00\"\\"}}`))
	f.Fuzz(func(t *testing.T, b []byte) { agree(t, b) })
}

func TestIsUUID(t *testing.T) {
	for s, want := range map[string]bool{
		"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a01": true,
		"0B7F0E0C-5F3E-4D6A-9A51-3F6F5D2F8A01": true,
		"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a0g": false,
		"0b7f0e0c-5f3e-4d6a-9a51+3f6f5d2f8a01": false,
		"0b7f0e0c05f3e-4d6a-9a51-3f6f5d2f8a01": false,
		"0b7f0e0c-5f3e-4d6a-9a51-3f6f5d2f8a0":  false,
		"":                                     false,
	} {
		if got := isUUID(s); got != want {
			t.Errorf("isUUID(%q) = %v; want %v", s, got, want)
		}
	}
}

// TestStringishAsEncodingJSON checks stringish, whose plain strings skip
// encoding/json, against encoding/json.
func TestStringishAsEncodingJSON(t *testing.T) {
	for _, raw := range []string{`"42"`, `""`, `"a b-c_d.e"`, `"caf\u00e9"`, `"é"`, `"a\"b"`, `"a\\b"`, `"tab\there"`, `"~"`} {
		var want string
		if err := json.Unmarshal([]byte(raw), &want); err != nil {
			t.Fatal(err)
		}
		got, err := stringish([]byte(raw))
		if err != nil || got != want {
			t.Errorf("stringish(%s) = %q, %v; want %q", raw, got, err, want)
		}
	}
}

// TestPlainStopsWhereTheByteLoopDoes puts every byte value at every
// position of short buffers, alone and after another stop byte, and
// checks that the eight-bytes-at-a-time scan stops where a byte-by-byte
// one does.
func TestPlainStopsWhereTheByteLoopDoes(t *testing.T) {
	stops := func(c byte) bool { return c == '"' || c == '\\' || c < 0x20 || c >= 0x80 }
	want := func(b []byte, i int) int {
		for ; i < len(b); i++ {
			if stops(b[i]) {
				return i
			}
		}
		return i
	}
	for n := 0; n <= 24; n++ {
		for pos := 0; pos < n; pos++ {
			for c := 0; c < 256; c++ {
				for _, later := range []int{-1, 0, '"', 0x7f, 0xff} {
					b := bytes.Repeat([]byte{'a'}, n)
					b[pos] = byte(c)
					if later >= 0 && pos+1 < n {
						b[n-1] = byte(later)
					}
					for from := 0; from <= pos; from += max(pos, 1) {
						if got, w := plain(b, from), want(b, from); got != w {
							t.Fatalf("plain(%q, %d) = %d, want %d", b, from, got, w)
						}
					}
				}
			}
		}
	}
}

// TestInternIsExactAndBounded: intern gives back the bytes' string
// from any number of goroutines, keeps at most maxInterned names, and
// none longer than maxInternLen.
func TestInternIsExactAndBounded(t *testing.T) {
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 3 * maxInterned {
				name := fmt.Sprintf("Entity%d", (i*7+g)%(2*maxInterned))
				if got := intern([]byte(name)); got != name {
					t.Errorf("intern(%q) = %q", name, got)
					return
				}
			}
		}()
	}
	wg.Wait()
	long := strings.Repeat("x", maxInternLen+1)
	if got := intern([]byte(long)); got != long {
		t.Fatalf("intern of a long name = %q", got)
	}
	m := *interned.Load()
	if len(m) > maxInterned {
		t.Fatalf("%d names interned; want at most %d", len(m), maxInterned)
	}
	if _, ok := m[long]; ok {
		t.Fatal("a name longer than maxInternLen was interned")
	}
	for k, v := range m {
		if k != v {
			t.Fatalf("interned[%q] = %q", k, v)
		}
	}
}
