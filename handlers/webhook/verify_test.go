package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestVerify checks Verify against signatures made by the action's own
// signer, and that each part of the signed content matters.
func TestVerify(t *testing.T) {
	key := []byte("a signing key")
	w := &Webhook{}
	w.setSecret(key)
	now := time.Now()
	ts := strconv.FormatInt(now.Unix(), 10)
	body := []byte(`{"id":"e1"}`)
	header := func(id, ts, sig string) http.Header {
		h := http.Header{}
		h.Set("Webhook-Id", id)
		h.Set("Webhook-Timestamp", ts)
		h.Set("Webhook-Signature", sig)
		return h
	}
	good := w.sign("msg_1", ts, body)
	if err := Verify(key, header("msg_1", ts, good), body, now, DefaultTolerance); err != nil {
		t.Fatalf("a signature made by the signer does not verify: %v", err)
	}
	if err := Verify(key, header("msg_1", ts, "v1,bm9wZQ== "+good), body, now, DefaultTolerance); err != nil {
		t.Errorf("one matching signature among several does not verify: %v", err)
	}
	old := strconv.FormatInt(now.Add(-10*time.Minute).Unix(), 10)
	cases := []struct {
		name   string
		key    []byte
		h      http.Header
		body   []byte
		reason string
	}{
		{"tampered body", key, header("msg_1", ts, good), []byte(`{"id":"e2"}`), "no v1 signature"},
		{"other id", key, header("msg_2", ts, good), body, "no v1 signature"},
		{"other key", []byte("another key"), header("msg_1", ts, good), body, "no v1 signature"},
		{"stale timestamp", key, header("msg_1", old, w.sign("msg_1", old, body)), body, "away from now"},
		{"timestamp not a number", key, header("msg_1", "yesterday", good), body, "Unix seconds"},
		{"no signature", key, header("msg_1", ts, ""), body, "missing"},
		{"other version", key, header("msg_1", ts, strings.Replace(good, "v1,", "v2,", 1)), body, "no v1 signature"},
	}
	for _, c := range cases {
		err := Verify(c.key, c.h, c.body, now, DefaultTolerance)
		if err == nil || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%s: Verify = %v, want an error about %q", c.name, err, c.reason)
		}
	}

	// VerifyMAC resets a reused MAC: one left with data written agrees
	// with Verify, request after request.
	mac := hmac.New(sha256.New, key)
	for i := range 3 {
		mac.Write([]byte("left over"))
		if err := VerifyMAC(mac, header("msg_1", ts, good), body, now, DefaultTolerance); err != nil {
			t.Errorf("VerifyMAC %d on a reused MAC: %v", i, err)
		}
		mac.Write([]byte("left over"))
		if err := VerifyMAC(mac, header("msg_1", ts, good), []byte(`{"id":"e2"}`), now, DefaultTolerance); err == nil {
			t.Errorf("VerifyMAC %d on a reused MAC accepts a tampered body", i)
		}
	}
}
