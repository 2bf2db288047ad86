package wal

import (
	"errors"
	"strings"
	"testing"
)

// TestWALLevel: a server whose wal_level is not logical is refused with
// the fix.
func TestWALLevel(t *testing.T) {
	for _, level := range []string{"replica", "minimal"} {
		err := checkWALLevel(level)
		if !errors.Is(err, ErrWALLevel) || !strings.Contains(err.Error(), "ALTER SYSTEM SET wal_level = logical") {
			t.Errorf("checkWALLevel(%q) = %v", level, err)
		}
	}
	if err := checkWALLevel("logical"); err != nil {
		t.Errorf("checkWALLevel(logical) = %v", err)
	}
}

func TestAppendValue(t *testing.T) {
	for _, c := range []struct {
		oid        uint32
		text, want string
	}{
		{oidTimestamptz, "2024-03-01 10:11:12.5+05:30", `"2024-03-01T10:11:12.5+05:30"`},
		{oidTimestamptz, "2024-03-01 10:11:12+00", `"2024-03-01T10:11:12+00:00"`},
		{oidTimestamp, "2024-03-01 10:11:12", `"2024-03-01T10:11:12"`},
		{oidTimetz, "10:11:12-03", `"10:11:12-03:00"`},
		{oidTimestamptz, "0044-03-15 10:11:12+00 BC", `"0044-03-15T10:11:12+00 BC"`},
		{oidTimestamp, "0044-03-15 10:11:12 BC", `"0044-03-15T10:11:12 BC"`},
		{oidTimestamptz, "infinity", `"infinity"`},
		{oidTimestamp, "-infinity", `"-infinity"`},
		{oidTimestamptz, "2024-03-01 10:11:12.123456-05", `"2024-03-01T10:11:12.123456-05:00"`},
		{oidTimetz, "10:11:12+05:30", `"10:11:12+05:30"`},
		{oidTimetz, "10:11:12.5+00", `"10:11:12.5+00:00"`},
		{oidNumeric, "10.50", `10.50`},
		{oidNumeric, "NaN", `"NaN"`},
		{oidFloat8, "-Infinity", `"-Infinity"`},
		{oidBool, "f", `false`},
		{1007, `{{1,2},{NULL,4}}`, `[[1,2],[null,4]]`},
		{1009, `{"a,b","q\"x",NULL,plain}`, `["a,b","q\"x",null,"plain"]`},
		{1009, `{}`, `[]`},
		{25, "text", `"text"`},
		{oidFloat8, "1e+20", `1e+20`},
		{oidFloat8, "-1.5E-07", `-1.5E-07`},
		{oidInt8, "-0", `-0`},
		{oidJSONB, `{"a": [1, 2], "b": {"c": null}}`, `{"a":[1,2],"b":{"c":null}}`},
		{oidJSON, `{"a": 1`, `"{\"a\": 1"`},
	} {
		if got := string(appendValue(nil, c.oid, []byte(c.text))); got != c.want {
			t.Errorf("appendValue(%d, %q) = %s, want %s", c.oid, c.text, got, c.want)
		}
	}
}

// Values are appended after what dst holds, json and jsonb included.
func TestAppendValueAppends(t *testing.T) {
	got := appendValue([]byte(`{"x":`), oidJSONB, []byte(`{"a": 1}`))
	got = appendValue(append(got, `,"y":`...), oidNumeric, []byte("2.50"))
	if string(got) != `{"x":{"a":1},"y":2.50` {
		t.Errorf("got %s", got)
	}
}
