package middleware

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisStoreConfig configures a RedisStore.
type RedisStoreConfig struct {
	// KeyPrefix starts every key (redis.key_prefix). Default "millrace:".
	KeyPrefix string
}

// SetDefaults fills the defaults.
func (c *RedisStoreConfig) SetDefaults() {
	if c.KeyPrefix == "" {
		c.KeyPrefix = "millrace:"
	}
}

// Validate checks the prefix, which must not hold glob characters so
// that operators can SCAN for it.
func (c RedisStoreConfig) Validate() error {
	if strings.ContainsAny(c.KeyPrefix, "*?[]") {
		return fmt.Errorf("redis store: key prefix %q must not hold *?[]", c.KeyPrefix)
	}
	return nil
}

// Values of a dedup key: "d" once done, "i:" + owner while in flight.
const (
	redisDone     = "d"
	redisInflight = "i:"
)

// Each script checks ownership and acts in one round trip; go-redis
// sends EVALSHA and falls back to EVAL after a restart of the server.
var (
	redisCommit = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false or v == 'd' or v == ARGV[1] then
  redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2])
  return 1
end
return 0`)
	redisRelease = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)
	redisExtend = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)
)

// RedisStore is the dedup ledger and result cache in Redis, shared by
// every process that uses the same server and prefix. Keys expire by
// themselves (PX), so there is no janitor. It needs Redis 7.0 or later
// (SET ... NX GET). It does not own the client.
type RedisStore struct {
	client redis.UniversalClient
	prefix string
}

var (
	_ DedupStore    = (*RedisStore)(nil)
	_ ResultCache   = (*RedisStore)(nil)
	_ ReserveLooker = (*RedisStore)(nil)
)

// NewRedisStore returns a store on client.
func NewRedisStore(client redis.UniversalClient, cfg RedisStoreConfig) (*RedisStore, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if client == nil {
		return nil, errors.New("redis store: nil client")
	}
	return &RedisStore{client: client, prefix: cfg.KeyPrefix}, nil
}

func (s *RedisStore) key(k string) string { return s.prefix + k }

// reserveCmd is SET key "i:owner" PX lease NX GET: it sets the key only
// when absent and answers the previous value, so that one round trip
// tells claimed (nil), done ("d") and in flight ("i:...") apart.
func (s *RedisStore) reserveCmd(ctx context.Context, c redis.Cmdable, key, owner string, lease time.Duration) *redis.StatusCmd {
	return c.SetArgs(ctx, s.key(key), redisInflight+owner, redis.SetArgs{Mode: "NX", TTL: max(lease, time.Millisecond), Get: true})
}

func reservation(cmd *redis.StatusCmd) (Reservation, error) {
	old, err := cmd.Result()
	switch {
	case errors.Is(err, redis.Nil):
		return Claimed, nil
	case err != nil:
		return 0, fmt.Errorf("redis store: reserve: %w", err)
	case old == redisDone:
		return Done, nil
	case strings.HasPrefix(old, redisInflight):
		return InFlight, nil
	}
	return 0, fmt.Errorf("redis store: reserve: unexpected value %q", old)
}

// Reserve implements DedupStore.
func (s *RedisStore) Reserve(ctx context.Context, key, owner string, lease time.Duration) (Reservation, error) {
	return reservation(s.reserveCmd(ctx, s.client, key, owner, lease))
}

// Extend implements DedupStore.
func (s *RedisStore) Extend(ctx context.Context, key, owner string, lease time.Duration) error {
	n, err := redisExtend.Run(ctx, s.client, []string{s.key(key)}, redisInflight+owner, max(lease, time.Millisecond).Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("redis store: extend: %w", err)
	}
	if n == 0 {
		return ErrLeaseLost
	}
	return nil
}

// Commit implements DedupStore.
func (s *RedisStore) Commit(ctx context.Context, key, owner string, window time.Duration) error {
	n, err := redisCommit.Run(ctx, s.client, []string{s.key(key)}, redisInflight+owner, max(window, time.Millisecond).Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("redis store: commit: %w", err)
	}
	if n == 0 {
		return ErrLeaseLost
	}
	return nil
}

// Release implements DedupStore.
func (s *RedisStore) Release(ctx context.Context, key, owner string) error {
	if err := redisRelease.Run(ctx, s.client, []string{s.key(key)}, redisInflight+owner).Err(); err != nil {
		return fmt.Errorf("redis store: release: %w", err)
	}
	return nil
}

func (s *RedisStore) lookupCmd(ctx context.Context, c redis.Cmdable, keys []string) *redis.SliceCmd {
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = s.key(k)
	}
	return c.MGet(ctx, full...)
}

func hits(cmd *redis.SliceCmd, n int) ([]bool, error) {
	vals, err := cmd.Result()
	if err != nil {
		return nil, fmt.Errorf("redis store: lookup: %w", err)
	}
	if len(vals) != n {
		return nil, fmt.Errorf("redis store: lookup: %d answers for %d keys", len(vals), n)
	}
	out := make([]bool, n)
	for i, v := range vals {
		out[i] = v != nil
	}
	return out, nil
}

// Lookup implements ResultCache with one MGET.
func (s *RedisStore) Lookup(ctx context.Context, keys ...string) ([]bool, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	return hits(s.lookupCmd(ctx, s.client, keys), len(keys))
}

// Store implements ResultCache.
func (s *RedisStore) Store(ctx context.Context, key string, ttl time.Duration) error {
	if err := s.client.Set(ctx, s.key(key), "1", max(ttl, time.Millisecond)).Err(); err != nil {
		return fmt.Errorf("redis store: store: %w", err)
	}
	return nil
}

// ReserveLookup implements ReserveLooker: SET NX GET and MGET in one
// pipeline.
func (s *RedisStore) ReserveLookup(ctx context.Context, key, owner string, lease time.Duration, cacheKeys []string) (ReserveLookupResult, error) {
	pipe := s.client.Pipeline()
	rc := s.reserveCmd(ctx, pipe, key, owner, lease)
	var lc *redis.SliceCmd
	if len(cacheKeys) > 0 {
		lc = s.lookupCmd(ctx, pipe, cacheKeys)
	}
	// Exec's error is the first failed command's; each command keeps
	// its own, and redis.Nil from the reserve means "claimed".
	_, _ = pipe.Exec(ctx)
	var r ReserveLookupResult
	r.Reservation, r.ReserveErr = reservation(rc)
	if lc != nil {
		r.Hits, r.LookupErr = hits(lc, len(cacheKeys))
	}
	return r, nil
}
