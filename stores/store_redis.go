package stores

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
// Commit needs no script (see commitCmd).
var (
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
//
// Concurrent calls share round trips: the calls that arrive while a
// pipeline is on the wire go out together in the next one (see
// batcher). Each command stays a command of its own key, so that the
// batches also work on a Redis Cluster, and each call keeps its own
// answer and error. Close ends the batching; a store that is never
// closed leaks no goroutine, since the batching's goroutines end when
// it is idle.
type RedisStore struct {
	client redis.UniversalClient
	prefix string
	b      *batcher[*redisCall]
}

var (
	_ DedupStore    = (*RedisStore)(nil)
	_ ResultCache   = (*RedisStore)(nil)
	_ ReserveLooker = (*RedisStore)(nil)
)

// Batching: one pipeline on the wire at a time, and whatever is queued
// meanwhile goes in the next. A second worker, sending while the first
// waited, halved the pipelines' size under load (two or three events a
// pipeline): each round trip costs this process and the server a write
// and a read, which made most of the server's CPU per event. Redis
// runs one command at a time, so a pipeline the server holds up (a slow
// script) held the other worker's up too. 256 commands keep one
// pipeline's reply small.
const (
	redisWorkers  = 1
	redisMaxBatch = 256
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
	s := &RedisStore{client: client, prefix: cfg.KeyPrefix}
	// go-redis ignores a ctx's cancellation (it bounds a pipeline by its
	// read and write timeouts, and with ContextTimeoutEnabled by the
	// ctx's deadline): the batches need not watch their callers, who
	// stop waiting at their own deadline or cancellation all the same.
	s.b = newBatcher(redisWorkers, redisMaxBatch, false, s.exec)
	return s, nil
}

// Close answers the calls still waiting with ErrStoreClosed and waits
// for the pipelines on the wire, which go-redis ends at the latest of
// their callers' deadlines or at its own timeouts; later calls fail at
// once. It does not close the client. It is safe to call twice.
func (s *RedisStore) Close() error {
	s.b.close()
	return nil
}

func (s *RedisStore) key(k string) string { return s.prefix + k }

type redisOp uint8

const (
	redisOpReserve redisOp = iota + 1 // with a lookup when keys is set
	redisOpLookup
	redisOpStore
	redisOpCommit
	redisOpExtend
	redisOpRelease
)

// redisCall is one call in a pipeline. Its commands are built and sent
// by a worker; the caller reads their answers once the call is done.
type redisCall struct {
	call
	op    redisOp
	key   string
	owner string
	ttl   time.Duration
	keys  []string

	reserve *redis.StatusCmd
	lookup  *redis.SliceCmd
	set     *redis.StatusCmd
	script  *redis.Cmd
}

// exec sends a batch as one pipeline.
func (s *RedisStore) exec(ctx context.Context, batch []*redisCall) {
	pipe := s.client.Pipeline()
	for _, c := range batch {
		switch c.op {
		case redisOpReserve:
			c.reserve = s.reserveCmd(ctx, c.key, c.owner, c.ttl)
			_ = pipe.Process(ctx, c.reserve)
			if len(c.keys) > 0 {
				c.lookup = s.lookupCmd(ctx, pipe, c.keys)
			}
		case redisOpLookup:
			c.lookup = s.lookupCmd(ctx, pipe, c.keys)
		case redisOpStore:
			c.set = pipe.Set(ctx, s.key(c.key), "1", max(c.ttl, time.Millisecond))
		case redisOpCommit:
			c.set = s.commitCmd(ctx, c.key, c.ttl)
			_ = pipe.Process(ctx, c.set)
		default:
			c.script = s.evalShaCmd(ctx, c)
			_ = pipe.Process(ctx, c.script)
		}
	}
	// Exec's error is the first failed command's; each command keeps
	// its own, and redis.Nil from a reserve means "claimed".
	_, _ = pipe.Exec(ctx)

	// After a restart (or SCRIPT FLUSH) the server has forgotten the
	// scripts: send those calls again with the source, which caches it.
	var again redis.Pipeliner
	for _, c := range batch {
		if c.script != nil && isNoScript(c.script.Err()) {
			if again == nil {
				again = s.client.Pipeline()
			}
			c.script = c.scriptOf().Eval(ctx, again, []string{s.key(c.key)}, c.scriptArgs()...)
		}
	}
	if again != nil {
		_, _ = again.Exec(ctx)
	}
}

func isNoScript(err error) bool {
	return err != nil && (errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT"))
}

func (c *redisCall) scriptOf() *redis.Script {
	switch c.op {
	case redisOpExtend:
		return redisExtend
	}
	return redisRelease
}

// The scripts' hashes, as command arguments (an interface each, made
// once rather than per command).
var (
	redisExtendSHA  any = redisExtend.Hash()
	redisReleaseSHA any = redisRelease.Hash()
)

// evalShaCmd is c's EVALSHA: what Script.EvalSha sends, built with
// fewer allocations (it copied the key and the arguments into slices of
// their own, and the hash into an interface, on every call).
func (s *RedisStore) evalShaCmd(ctx context.Context, c *redisCall) *redis.Cmd {
	var sha any
	switch c.op {
	case redisOpExtend:
		sha = redisExtendSHA
	default:
		sha = redisReleaseSHA
	}
	var cmd *redis.Cmd
	if c.op == redisOpRelease {
		cmd = redis.NewCmd(ctx, "evalsha", sha, 1, s.key(c.key), redisInflight+c.owner)
	} else {
		cmd = redis.NewCmd(ctx, "evalsha", sha, 1, s.key(c.key), redisInflight+c.owner, max(c.ttl, time.Millisecond).Milliseconds())
	}
	cmd.SetFirstKeyPos(3)
	return cmd
}

func (c *redisCall) scriptArgs() []any {
	if c.op == redisOpRelease {
		return []any{redisInflight + c.owner}
	}
	return []any{redisInflight + c.owner, max(c.ttl, time.Millisecond).Milliseconds()}
}

// reserveCmd is SET key "i:owner" PX lease NX GET: it sets the key only
// when absent and answers the previous value, so that one round trip
// tells claimed (nil), done ("d") and in flight ("i:...") apart.
// It is built as SetArgs builds it, with fewer allocations.
func (s *RedisStore) reserveCmd(ctx context.Context, key, owner string, lease time.Duration) *redis.StatusCmd {
	return redis.NewStatusCmd(ctx, "set", s.key(key), redisInflight+owner, "px", max(lease, time.Millisecond).Milliseconds(), "nx", "get")
}

// commitCmd is SET key "d" PX window GET: it marks the key done
// whatever it held, and answers what that was, so that Commit can tell
// whether another owner held it. Marking done over another owner's
// claim is what the ledger wants: this owner's work was done, so the
// other delivery need not run it again (its Commit finds the key done
// and succeeds; its Release leaves it done). A script that checked the
// owner first cost Redis 2.6 times the server time of this SET.
func (s *RedisStore) commitCmd(ctx context.Context, key string, window time.Duration) *redis.StatusCmd {
	return redis.NewStatusCmd(ctx, "set", s.key(key), redisDone, "px", max(window, time.Millisecond).Milliseconds(), "get")
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
	c := &redisCall{op: redisOpReserve, key: key, owner: owner, ttl: lease}
	if err := s.b.do(ctx, c); err != nil {
		return 0, fmt.Errorf("redis store: reserve: %w", err)
	}
	return reservation(c.reserve)
}

// runScript runs a commit, extend or release and answers the script's
// result.
func (s *RedisStore) runScript(ctx context.Context, op redisOp, key, owner string, ttl time.Duration) (int64, error) {
	c := &redisCall{op: op, key: key, owner: owner, ttl: ttl}
	if err := s.b.do(ctx, c); err != nil {
		return 0, err
	}
	return c.script.Int64()
}

// Extend implements DedupStore.
func (s *RedisStore) Extend(ctx context.Context, key, owner string, lease time.Duration) error {
	n, err := s.runScript(ctx, redisOpExtend, key, owner, lease)
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
	c := &redisCall{op: redisOpCommit, key: key, owner: owner, ttl: window}
	if err := s.b.do(ctx, c); err != nil {
		return fmt.Errorf("redis store: commit: %w", err)
	}
	old, err := c.set.Result()
	switch {
	case errors.Is(err, redis.Nil), old == redisDone, old == redisInflight+owner:
		return nil
	case err != nil:
		return fmt.Errorf("redis store: commit: %w", err)
	}
	return ErrLeaseLost
}

// Release implements DedupStore.
func (s *RedisStore) Release(ctx context.Context, key, owner string) error {
	if _, err := s.runScript(ctx, redisOpRelease, key, owner, 0); err != nil {
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
	c := &redisCall{op: redisOpLookup, keys: keys}
	if err := s.b.do(ctx, c); err != nil {
		return nil, fmt.Errorf("redis store: lookup: %w", err)
	}
	return hits(c.lookup, len(keys))
}

// Store implements ResultCache.
func (s *RedisStore) Store(ctx context.Context, key string, ttl time.Duration) error {
	c := &redisCall{op: redisOpStore, key: key, ttl: ttl}
	if err := s.b.do(ctx, c); err != nil {
		return fmt.Errorf("redis store: store: %w", err)
	}
	if err := c.set.Err(); err != nil {
		return fmt.Errorf("redis store: store: %w", err)
	}
	return nil
}

// ReserveLookup implements ReserveLooker: SET NX GET and MGET in the
// same pipeline.
func (s *RedisStore) ReserveLookup(ctx context.Context, key, owner string, lease time.Duration, cacheKeys []string) (ReserveLookupResult, error) {
	c := &redisCall{op: redisOpReserve, key: key, owner: owner, ttl: lease, keys: cacheKeys}
	var r ReserveLookupResult
	if err := s.b.do(ctx, c); err != nil {
		r.ReserveErr = fmt.Errorf("redis store: reserve: %w", err)
		if len(cacheKeys) > 0 {
			r.LookupErr = fmt.Errorf("redis store: lookup: %w", err)
		}
		return r, nil
	}
	r.Reservation, r.ReserveErr = reservation(c.reserve)
	if c.lookup != nil {
		r.Hits, r.LookupErr = hits(c.lookup, len(cacheKeys))
	}
	return r, nil
}
