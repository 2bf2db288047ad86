package partition

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisLeases keeps the leases in Redis: one key per partition (SET NX
// PX, renewed and deleted only by its holder) and the members in a
// sorted set scored by the time their membership runs out.
type RedisLeases struct {
	client redis.UniversalClient
	prefix string
}

var _ Leases = (*RedisLeases)(nil)

// NewRedisLeases returns the leases under prefix (e.g.
// "millrace:partitions:"). It does not own the client.
func NewRedisLeases(client redis.UniversalClient, prefix string) *RedisLeases {
	return &RedisLeases{client: client, prefix: prefix}
}

// join adds ARGV[1] to the members set KEYS[1] until ARGV[2] ms from
// now (the server's clock), drops the expired ones and returns the rest.
var join = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZRANGE', KEYS[1], 0, -1)
`)

// acquire sets KEYS[1] to ARGV[1] for ARGV[2] ms when it is free or
// already ARGV[1]'s; 1 when it is ARGV[1]'s afterwards.
var acquire = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`)

var release = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

func (l *RedisLeases) members() string        { return l.prefix + "members" }
func (l *RedisLeases) partition(p int) string { return l.prefix + strconv.Itoa(p) }

// Join implements Leases.
func (l *RedisLeases) Join(ctx context.Context, member string, ttl time.Duration) ([]string, error) {
	ms := max(ttl, time.Millisecond).Milliseconds()
	members, err := join.Run(ctx, l.client, []string{l.members()}, member, ms).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("partition: join: %w", err)
	}
	return members, nil
}

// Acquire implements Leases.
func (l *RedisLeases) Acquire(ctx context.Context, p int, member string, ttl time.Duration) (bool, error) {
	ms := max(ttl, time.Millisecond).Milliseconds()
	n, err := acquire.Run(ctx, l.client, []string{l.partition(p)}, member, ms).Int()
	if err != nil {
		return false, fmt.Errorf("partition: acquire %d: %w", p, err)
	}
	return n == 1, nil
}

// Release implements Leases.
func (l *RedisLeases) Release(ctx context.Context, p int, member string) error {
	if err := release.Run(ctx, l.client, []string{l.partition(p)}, member).Err(); err != nil {
		return fmt.Errorf("partition: release %d: %w", p, err)
	}
	return nil
}

// Leave implements Leases.
func (l *RedisLeases) Leave(ctx context.Context, member string) error {
	if err := l.client.ZRem(ctx, l.members(), member).Err(); err != nil {
		return fmt.Errorf("partition: leave: %w", err)
	}
	return nil
}
