package webhook

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/millrace/millrace/handlers"
)

// StatusError is an answer outside 2xx. Its message holds the method, the
// status and the start of the answer's body, never the URL.
type StatusError struct {
	Method     string
	StatusCode int
	// Status is the status line's code and text, e.g. "503 Service Unavailable".
	Status string
	// Body is the start of the response body, clipped and made printable.
	Body string
}

// Is makes a 429 answer match handlers.ErrThrottled and a 503
// handlers.ErrOverloaded.
func (e *StatusError) Is(target error) bool {
	switch target {
	case handlers.ErrThrottled:
		return e.StatusCode == http.StatusTooManyRequests
	case handlers.ErrOverloaded:
		return e.StatusCode == http.StatusServiceUnavailable
	}
	return false
}

func (e *StatusError) Error() string {
	s := e.Method + " answered " + e.Status
	if e.Body != "" {
		s += ": " + e.Body
	}
	return s
}

// Transient reports whether a status is worth retrying: 408, 425, 429 and
// 5xx.
func Transient(code int) bool {
	switch code {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests:
		return true
	}
	return code >= 500 && code <= 599
}

const (
	clipBytes  = 256      // of a failed answer's body, kept for the error
	drainBytes = 64 << 10 // read before close so the connection is reused
)

// Do sends req with rt (a transport from NewTransport; req's context
// bounds the whole exchange) and classifies the outcome: nil for 2xx; a
// transient error for 408, 425, 429, 5xx and network failures (a
// *handlers.RetryAfterError when the answer has a Retry-After header, in
// seconds or as an HTTP date); a handlers.Permanent error for any other
// status (3xx included: redirects are not followed) and for a destination
// the Guard refused. Errors never include the URL. The response body is
// drained and closed.
//
// Do calls the transport directly rather than through an http.Client: the
// client's redirect and cookie machinery is not wanted, and skipping it
// saves a header copy and a timer per request. Credentials in the URL
// are sent as basic auth, as the client would.
func Do(rt http.RoundTripper, req *http.Request) error {
	if u := req.URL.User; u != nil && req.Header.Get("Authorization") == "" {
		pw, _ := u.Password()
		req.SetBasicAuth(u.Username(), pw)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return sendError(req.Method, err)
	}
	defer drain(resp)
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		return nil
	}
	serr := &StatusError{
		Method:     req.Method,
		StatusCode: resp.StatusCode,
		Status:     resp.Status,
		Body:       clip(resp.Body),
	}
	if serr.Status == "" {
		serr.Status = strconv.Itoa(resp.StatusCode)
	}
	if !Transient(resp.StatusCode) {
		return handlers.Permanent(serr)
	}
	if d, ok := ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok && d > 0 {
		return &handlers.RetryAfterError{Err: serr, After: d}
	}
	return serr
}

// drain reads what is left of the body, so that the connection goes back
// to the pool, and closes it.
func drain(resp *http.Response) {
	if resp.ContentLength != 0 {
		_, _ = io.CopyN(io.Discard, resp.Body, drainBytes)
	}
	_ = resp.Body.Close()
}

// sendError strips the URL that *url.Error carries and marks refused
// destinations permanent.
func sendError(method string, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	err = fmt.Errorf("%s: %w", method, err)
	if errors.Is(err, ErrBlocked) {
		return handlers.Permanent(err)
	}
	return err
}

// ParseRetryAfter reads a Retry-After value: delay seconds or an HTTP
// date (a date in the past gives zero).
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		const maxSecs = int64(1<<63-1) / int64(time.Second)
		return time.Duration(min(n, maxSecs)) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// clip reads the start of a failed answer's body as one printable line.
func clip(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, clipBytes+1))
	more := len(b) > clipBytes
	if more {
		b = b[:clipBytes]
	}
	// Invalid UTF-8, such as a rune cut by the limit, is dropped.
	s := strings.ToValidUTF8(string(b), "")
	s = strings.Join(strings.FieldsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }), " ")
	if more {
		s += "…"
	}
	return s
}
