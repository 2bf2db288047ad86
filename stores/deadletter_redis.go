package stores

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// RedisDeadLettersConfig configures a RedisDeadLetters store.
type RedisDeadLettersConfig struct {
	// Key is the stream holding the entries, e.g. "millrace:dlq". Required.
	Key string
	// MaxEntries caps the stream approximately (XADD MAXLEN ~): Redis
	// trims whole nodes, so a few more entries than this may remain. 0
	// keeps everything.
	MaxEntries int
}

// Validate reports missing fields.
func (c RedisDeadLettersConfig) Validate() error {
	var errs []error
	if c.Key == "" {
		errs = append(errs, errors.New("redis dead letters: Key is required"))
	}
	if c.MaxEntries < 0 {
		errs = append(errs, errors.New("redis dead letters: MaxEntries must not be negative"))
	}
	return errors.Join(errs...)
}

// RedisDeadLetters keeps dead letters in a Redis stream, one entry per
// dead letter; the entry's id is the stream id. The payload is a field of
// its own, raw bytes; the other fields are JSON in another. The store is
// as durable as the Redis server's persistence (AOF or RDB) makes it.
type RedisDeadLetters struct {
	client redis.UniversalClient
	cfg    RedisDeadLettersConfig
}

var _ DeadLetters = (*RedisDeadLetters)(nil)

// Fields of a stream entry.
const (
	redisEntryField   = "entry"
	redisPayloadField = "payload"
)

// redisPage is how many entries List reads per XRANGE.
const redisPage = 500

var redisIDRE = regexp.MustCompile(`^[0-9]+-[0-9]+$`)

// NewRedisDeadLetters returns the store. It does not own client.
func NewRedisDeadLetters(client redis.UniversalClient, cfg RedisDeadLettersConfig) (*RedisDeadLetters, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &RedisDeadLetters{client: client, cfg: cfg}, nil
}

// Put appends dl to the stream and returns its stream id.
func (s *RedisDeadLetters) Put(ctx context.Context, dl DeadLetter) (string, error) {
	dl = normalizeEntry(dl)
	meta := dl
	meta.ID, meta.Payload = "", nil
	b, err := json.Marshal(meta)
	if err != nil {
		return "", fmt.Errorf("redis dead letters: encode: %w", err)
	}
	args := &redis.XAddArgs{Stream: s.cfg.Key, Values: []any{redisEntryField, b, redisPayloadField, dl.Payload}}
	if s.cfg.MaxEntries > 0 {
		args.MaxLen, args.Approx = int64(s.cfg.MaxEntries), true
	}
	id, err := s.client.XAdd(ctx, args).Result()
	if err != nil {
		return "", fmt.Errorf("redis dead letters: put: %w", err)
	}
	return id, nil
}

func decodeRedisEntry(m redis.XMessage) (DeadLetter, error) {
	var dl DeadLetter
	raw, _ := m.Values[redisEntryField].(string)
	if err := json.Unmarshal([]byte(raw), &dl); err != nil {
		return DeadLetter{}, fmt.Errorf("redis dead letters: entry %s: %w", m.ID, err)
	}
	dl.ID = m.ID
	p, _ := m.Values[redisPayloadField].(string)
	dl.Payload = []byte(p)
	return dl, nil
}

// Get returns the entry with id, or an error wrapping ErrNotFound.
func (s *RedisDeadLetters) Get(ctx context.Context, id string) (DeadLetter, error) {
	if !redisIDRE.MatchString(id) {
		return DeadLetter{}, fmt.Errorf("redis dead letters: %q: %w", id, ErrNotFound)
	}
	ms, err := s.client.XRange(ctx, s.cfg.Key, id, id).Result()
	if err != nil {
		return DeadLetter{}, fmt.Errorf("redis dead letters: get %s: %w", id, err)
	}
	if len(ms) == 0 {
		return DeadLetter{}, fmt.Errorf("redis dead letters: %q: %w", id, ErrNotFound)
	}
	return decodeRedisEntry(ms[0])
}

// List pages through the stream with XRANGE, from the id of Since (less a
// margin for clock skew) when it is set, and filters each page.
func (s *RedisDeadLetters) List(ctx context.Context, f DeadLetterFilter) ([]DeadLetter, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	start := "-"
	if !f.Since.IsZero() {
		if ms := f.Since.Add(-sinceSlack).UnixMilli(); ms > 0 {
			start = strconv.FormatInt(ms, 10)
		}
	}
	out := []DeadLetter{}
	for len(out) < limit {
		ms, err := s.client.XRangeN(ctx, s.cfg.Key, start, "+", redisPage).Result()
		if err != nil {
			return nil, fmt.Errorf("redis dead letters: list: %w", err)
		}
		for _, m := range ms {
			dl, err := decodeRedisEntry(m)
			if err != nil {
				return nil, err
			}
			if matches(dl, f) {
				out = append(out, dl)
				if len(out) == limit {
					break
				}
			}
		}
		if len(ms) < redisPage {
			break
		}
		start = "(" + ms[len(ms)-1].ID
	}
	return out, nil
}

// Delete removes the entries; ids that are unknown are ignored.
func (s *RedisDeadLetters) Delete(ctx context.Context, ids ...string) error {
	valid := make([]string, 0, len(ids))
	for _, id := range ids {
		if redisIDRE.MatchString(id) {
			valid = append(valid, id)
		}
	}
	if len(valid) == 0 {
		return nil
	}
	if err := s.client.XDel(ctx, s.cfg.Key, valid...).Err(); err != nil {
		return fmt.Errorf("redis dead letters: delete: %w", err)
	}
	return nil
}

// Purge removes every entry and returns their number, in one
// transaction.
func (s *RedisDeadLetters) Purge(ctx context.Context) (int, error) {
	var n *redis.IntCmd
	_, err := s.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		n = p.XLen(ctx, s.cfg.Key)
		p.Del(ctx, s.cfg.Key)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("redis dead letters: purge: %w", err)
	}
	return int(n.Val()), nil
}

// Count returns the number of entries (XLEN).
func (s *RedisDeadLetters) Count(ctx context.Context) (int, error) {
	n, err := s.client.XLen(ctx, s.cfg.Key).Result()
	if err != nil {
		return 0, fmt.Errorf("redis dead letters: count: %w", err)
	}
	return int(n), nil
}
