package redisstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Export reads the entries of topic with XRANGE, from every partition
// stream when Partitions is set, merged in entry-id (time) order: the
// entries added at or after since (zero: all), at most limit of them (0:
// all). It calls fn with each entry's id and payload. XRANGE reads
// without a consumer group, so the groups' pending entries and delivery
// counts are not touched. With until after now it then taps the entries
// added meanwhile, with XREAD (no group either), until that time.
func (c Config) Export(ctx context.Context, client redis.UniversalClient, topic string, since, until time.Time, limit int,
	fn func(id string, payload []byte) error) error {
	streams := c.Streams(topic)
	start := "-"
	if !since.IsZero() {
		start = strconv.FormatInt(since.UnixMilli(), 10)
	}
	var all []redis.XMessage
	last := make([]string, len(streams)) // the last id read of each stream
	for i, s := range streams {
		// The first limit entries overall are among the first limit of
		// each stream.
		from, n := start, 0
		for {
			page, err := client.XRangeN(ctx, s, from, "+", 500).Result()
			if err != nil {
				return fmt.Errorf("redisstream: export %s: %w", s, err)
			}
			all = append(all, page...)
			if len(page) > 0 {
				last[i] = page[len(page)-1].ID
			}
			if n += len(page); len(page) < 500 || (limit > 0 && n >= limit) {
				break
			}
			from = "(" + page[len(page)-1].ID
		}
	}
	n, err := emitEntries(all, limit, fn)
	if err != nil || (limit > 0 && n >= limit) || !time.Now().Before(until) {
		return err
	}
	for i, s := range streams {
		if last[i] != "" {
			continue
		}
		// Nothing read from it (empty, or all before since): tap from
		// its last entry on.
		top, err := client.XRevRangeN(ctx, s, "+", "-", 1).Result()
		if err != nil {
			return fmt.Errorf("redisstream: export %s: %w", s, err)
		}
		last[i] = "0-0"
		if len(top) > 0 {
			last[i] = top[0].ID
		}
	}
	for {
		wait := min(time.Until(until), time.Second)
		if wait <= 0 {
			return nil
		}
		res, err := client.XRead(ctx, &redis.XReadArgs{Streams: append(slices.Clone(streams), last...), Count: 500,
			Block: max(wait, 10*time.Millisecond)}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("redisstream: export: tap: %w", err)
		}
		var got []redis.XMessage
		for _, r := range res {
			if len(r.Messages) == 0 {
				continue
			}
			got = append(got, r.Messages...)
			last[slices.Index(streams, r.Stream)] = r.Messages[len(r.Messages)-1].ID
		}
		left := 0
		if limit > 0 {
			left = limit - n
		}
		m, err := emitEntries(got, left, fn)
		if n += m; err != nil || (limit > 0 && n >= limit) {
			return err
		}
	}
}

// emitEntries calls fn with the entries in entry-id order, at most limit
// of them (0: all), and returns how many it called it with.
func emitEntries(all []redis.XMessage, limit int, fn func(id string, payload []byte) error) (int, error) {
	sort.SliceStable(all, func(i, j int) bool { return entryLess(all[i].ID, all[j].ID) })
	for i, m := range all {
		if limit > 0 && i >= limit {
			return i, nil
		}
		p, _ := m.Values[fieldPayload].(string)
		if err := fn(m.ID, []byte(p)); err != nil {
			return i, err
		}
	}
	return len(all), nil
}

// entryLess orders stream entry ids, "<ms>-<seq>", by time then sequence.
func entryLess(a, b string) bool {
	am, as, _ := strings.Cut(a, "-")
	bm, bs, _ := strings.Cut(b, "-")
	x, _ := strconv.ParseUint(am, 10, 64)
	y, _ := strconv.ParseUint(bm, 10, 64)
	if x != y {
		return x < y
	}
	x, _ = strconv.ParseUint(as, 10, 64)
	y, _ = strconv.ParseUint(bs, 10, 64)
	return x < y
}
