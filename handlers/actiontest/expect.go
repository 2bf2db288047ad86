package actiontest

import (
	"testing"
	"time"

	"github.com/millrace/millrace/handlers"
)

// ExpectPermanent fails the test unless err is a permanent error: one
// that sends the event to the observer's failure policy at once.
func ExpectPermanent(t testing.TB, err error) {
	t.Helper()
	if err == nil || !handlers.IsPermanent(err) {
		t.Errorf("err = %v; want a permanent error (handlers.Permanent)", err)
	}
}

// ExpectTransient fails the test unless err is a transient error: one
// that the observer's retry policy retries.
func ExpectTransient(t testing.TB, err error) {
	t.Helper()
	if err == nil || handlers.IsPermanent(err) {
		t.Errorf("err = %v; want a transient error", err)
	}
}

// ExpectRetryAfter fails the test unless err is transient and asks for a
// wait of exactly want before the next attempt (handlers.RetryAfter).
func ExpectRetryAfter(t testing.TB, err error, want time.Duration) {
	t.Helper()
	ExpectTransient(t, err)
	if got := handlers.RetryAfter(err); got != want {
		t.Errorf("RetryAfter(%v) = %s; want %s", err, got, want)
	}
}
