package redisstream

import (
	"context"
	"fmt"
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
// counts are not touched.
func (c Config) Export(ctx context.Context, client redis.UniversalClient, topic string, since time.Time, limit int,
	fn func(id string, payload []byte) error) error {
	streams := c.Streams(topic)
	start := "-"
	if !since.IsZero() {
		start = strconv.FormatInt(since.UnixMilli(), 10)
	}
	var all []redis.XMessage
	for _, s := range streams {
		// The first limit entries overall are among the first limit of
		// each stream.
		from, n := start, 0
		for {
			page, err := client.XRangeN(ctx, s, from, "+", 500).Result()
			if err != nil {
				return fmt.Errorf("redisstream: export %s: %w", s, err)
			}
			all = append(all, page...)
			if n += len(page); len(page) < 500 || (limit > 0 && n >= limit) {
				break
			}
			from = "(" + page[len(page)-1].ID
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return entryLess(all[i].ID, all[j].ID) })
	for i, m := range all {
		if limit > 0 && i >= limit {
			break
		}
		p, _ := m.Values[fieldPayload].(string)
		if err := fn(m.ID, []byte(p)); err != nil {
			return err
		}
	}
	return nil
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
