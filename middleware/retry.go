package middleware

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/internal/runs"
)

// Backoff turns an observer's retry policy into waits.
//
// It is written on config.Retry.Delay rather than on
// github.com/cenkalti/backoff/v5 (which Watermill's Retry middleware
// uses) because the policy needs what that library does not give: a
// linear schedule, a minimum wait asked for by the failure itself (an
// HTTP Retry-After), and waits that do not consume an attempt (while a
// circuit breaker is open). Its BackOff values are also stateful
// iterators, while the wait here depends only on how many times an
// action failed, which the caller already counts per action. The
// schedule lives in config.Retry.Delay, next to its validation.
type Backoff struct {
	policy config.Retry
}

// NewBackoff returns the waits of policy.
func NewBackoff(policy config.Retry) Backoff { return Backoff{policy: policy} }

// Attempts is the number of attempts the policy allows, at least 1.
func (b Backoff) Attempts() int { return max(b.policy.MaxAttempts, 1) }

// Next returns the wait after failures failed attempts (failures >= 1):
// the policy's delay with its jitter spread (±Jitter × delay), and never
// less than atLeast.
func (b Backoff) Next(failures int, atLeast time.Duration) time.Duration {
	d := b.policy.Delay(failures)
	if j := b.policy.Jitter; j > 0 && d > 0 {
		d = time.Duration(float64(d) * (1 + j*(2*rand.Float64()-1)))
	}
	return max(d, atLeast, 0)
}

// Sleep waits d or until ctx ends, whichever comes first, and returns
// ctx.Err() in the second case.
func Sleep(ctx context.Context, d time.Duration) error { return runs.Sleep(ctx, d) }
