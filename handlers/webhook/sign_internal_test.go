package webhook

import (
	"testing"

	"github.com/millrace/millrace/handlers"
)

// TestSignTestVector reproduces the signature the Standard Webhooks
// reference implementations compute for their published vector: a
// round trip against our own verifier would pass with the delimiter, the
// base64 alphabet or the key decoding all wrong.
func TestSignTestVector(t *testing.T) {
	key, err := DecodeSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	var c Config
	c.SetDefaults()
	c.URL = "https://example.com/"
	w, err := New(t.Context(), c, handlers.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	wh := w.(*Webhook)
	wh.setSecret(key)
	for range 2 { // the second run reuses a pooled MAC: Reset must work
		got := wh.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", []byte(`{"test": 2432232314}`))
		if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
			t.Fatalf("sign(test vector) = %q; want %q", got, want)
		}
	}
}
