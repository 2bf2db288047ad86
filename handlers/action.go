package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
)

// Action is one effect of an observer: a webhook call, a message, a SQL
// call. Execute must honour ctx (its deadline is the observer's action
// timeout) and be safe for concurrent use. It returns nil on success, an
// error wrapped with Permanent when a retry cannot help, or any other
// error for a transient failure that a retry may fix.
//
// An Action that holds resources also implements io.Closer; the router
// calls Close once, at shutdown.
type Action interface {
	Execute(ctx context.Context, ev *event.Event) error
}

// ActionFunc adapts a function to Action.
type ActionFunc func(ctx context.Context, ev *event.Event) error

// Execute calls f.
func (f ActionFunc) Execute(ctx context.Context, ev *event.Event) error { return f(ctx, ev) }

// Execute runs a on ev the way millrace runs every action: a panic in
// a.Execute does not crash the process but comes back as a Permanent
// error, "panic: <value>", so the event goes to the observer's failure
// policy instead of being retried into the same panic. Any other result
// is a.Execute's own. Code that runs actions (the observer engine, the
// delivery middleware, tests) calls this, never a.Execute directly.
func Execute(ctx context.Context, a Action, ev *event.Event) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = Permanent(fmt.Errorf("panic: %v", r))
		}
	}()
	return a.Execute(ctx, ev)
}

// Deps is what an action's build function may use. Every field may be
// nil or zero in tests; builders check what they need.
type Deps struct {
	// Logger is scoped to the action ("observer", "action" attributes).
	Logger *slog.Logger
	// Config is the whole configuration, for shared sections such as
	// databases, smtp and redis.
	Config *config.Config
	// Publish puts a message on the bus, on topic, with the given id.
	Publish func(ctx context.Context, topic, id string, payload []byte) error
	// Redis returns the shared client of the [redis] section, opened on
	// first use and closed by the router.
	Redis func() (redis.UniversalClient, error)
	// Database returns the shared pool of a [databases.NAME] section,
	// opened on first use and closed by the router.
	Database func(name string) (*pgxpool.Pool, error)
	// ActionHash is the hash of the action's canonical config (Spec.Hash);
	// with the event id it makes keys that are stable across retries.
	ActionHash string
}

// ErrPermanent marks an error that a retry cannot fix: a 4xx answer, bad
// config, a bad payload. The router sends it to the observer's failure
// policy at once. Check with errors.Is.
var ErrPermanent = errors.New("permanent failure")

// Permanent wraps err so that errors.Is(err, ErrPermanent) holds. A nil
// err stays nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string        { return e.err.Error() }
func (e *permanentError) Unwrap() []error      { return []error{e.err, ErrPermanent} }
func (e *permanentError) Is(target error) bool { return target == ErrPermanent }

// IsPermanent reports whether err, or any error it wraps, is permanent.
func IsPermanent(err error) bool { return errors.Is(err, ErrPermanent) }

// ErrOverloaded marks an error by which an endpoint said it is
// overloaded (HTTP 429 or 503): the delivery limits lower the endpoint's
// concurrency (docs/actions.md, "Delivery limits"). An action's error
// matches it through errors.Is, with an Is method or by wrapping it.
var ErrOverloaded = errors.New("endpoint overloaded")

// ErrThrottled marks an error by which an endpoint asked for fewer
// requests (HTTP 429). It is also an overload (IsOverloaded), but not a
// failure of the endpoint: it does not count against its circuit
// breaker, since the endpoint is up and the delivery limit slows down.
var ErrThrottled = errors.New("endpoint asked for fewer requests")

// IsOverloaded reports whether err shows an overloaded endpoint: it
// matches ErrOverloaded, or it is a timeout (the action's deadline, or a
// network timeout).
func IsOverloaded(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrOverloaded) || errors.Is(err, ErrThrottled) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// RetryAfterError is a transient error whose source asked for a minimum
// wait (an HTTP Retry-After header).
type RetryAfterError struct {
	Err   error
	After time.Duration
}

func (e *RetryAfterError) Error() string {
	return fmt.Sprintf("%v (retry after %s)", e.Err, e.After)
}

func (e *RetryAfterError) Unwrap() error { return e.Err }

// RetryAfter returns the longest wait that err or an error it wraps asks
// for, or zero.
func RetryAfter(err error) time.Duration {
	var best time.Duration
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if ra, ok := e.(*RetryAfterError); ok && ra.After > best {
			best = ra.After
		}
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		}
	}
	walk(err)
	return best
}
