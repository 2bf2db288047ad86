package stores_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/stores"
)

// benchLedgerStore is one observer run's store traffic from many
// handlers at once, as the router makes it: ReserveLookup with one
// cache key, then Commit, each on a fresh event.
func benchLedgerStore(b *testing.B, s ledgerStore) {
	ctx := context.Background()
	var seq atomic.Int64
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	b.SetParallelism(32)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ev := run + "-" + strconv.FormatInt(seq.Add(1), 10)
			key, owner := stores.DedupKey(ev, "obs"), "o"+ev
			r, err := s.ReserveLookup(ctx, key, owner, time.Minute, stores.CacheKeys(ev, "obs", []string{"h"}))
			if err != nil || r.ReserveErr != nil || r.LookupErr != nil {
				b.Errorf("ReserveLookup: %v / %v / %v", err, r.ReserveErr, r.LookupErr)
				return
			}
			if r.Reservation != stores.Claimed {
				b.Errorf("ReserveLookup of a fresh key = %v; want claimed", r.Reservation)
				return
			}
			if err := s.Commit(ctx, key, owner, time.Minute); err != nil {
				b.Errorf("Commit: %v", err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

func BenchmarkRedisStoreParallel(b *testing.B) {
	client, prefix := testenv.Redis(b)
	s, err := stores.NewRedisStore(client, stores.RedisStoreConfig{KeyPrefix: prefix})
	if err != nil {
		b.Fatal(err)
	}
	benchLedgerStore(b, s)
}

func BenchmarkPostgresStoreParallel(b *testing.B) {
	pool, _ := testenv.Postgres(b)
	// As the topologies open the ledger's pool: without waiting for the
	// disk on commit.
	cfg := pool.Config().Copy()
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	lpool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(lpool.Close)
	s, err := stores.NewPostgresStore(lpool, stores.PostgresStoreConfig{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	if err := s.Migrate(context.Background()); err != nil {
		b.Fatal(err)
	}
	benchLedgerStore(b, s)
}
