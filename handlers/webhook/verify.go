package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// DefaultTolerance is how far a request's webhook-timestamp may be from
// the receiver's clock, as the Standard Webhooks specification suggests.
const DefaultTolerance = 5 * time.Minute

// Verify checks a Standard Webhooks signature, as a receiver of
// millrace's webhooks (or millrace's own signed ingest) does: h carries
// webhook-id, webhook-timestamp (Unix seconds, within tolerance of now)
// and webhook-signature, a space-separated list of "v1,<base64
// HMAC-SHA256 of id.timestamp.body>" of which one must match; key is
// the HMAC key (DecodeSecret of the configured secret).
func Verify(key []byte, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	return VerifyMAC(hmac.New(sha256.New, key), h, body, now, tolerance)
}

// VerifyMAC is Verify with the caller's MAC, hmac.New(sha256.New, key),
// which it resets before use: a receiver that checks many requests can
// keep MACs in a sync.Pool instead of paying hmac.New's two hash states
// and key schedule per request. mac must not be used concurrently.
func VerifyMAC(mac hash.Hash, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	id, ts, sigs := h.Get("Webhook-Id"), h.Get("Webhook-Timestamp"), h.Get("Webhook-Signature")
	if id == "" || ts == "" || sigs == "" {
		return errors.New("missing webhook-id, webhook-timestamp or webhook-signature")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("webhook-timestamp %q is not Unix seconds", ts)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("webhook-timestamp is %s away from now, more than %s", d.Round(time.Second), tolerance)
	}
	mac.Reset()
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	want := mac.Sum(nil)
	for _, s := range strings.Fields(sigs) {
		v, ok := strings.CutPrefix(s, "v1,")
		if !ok {
			continue
		}
		if got, err := base64.StdEncoding.DecodeString(v); err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return errors.New("no v1 signature matches")
}
