package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"

	"github.com/millrace/millrace/stores"

	goredis "github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
	"github.com/millrace/millrace/topologies/postgres"
	"github.com/millrace/millrace/topologies/redisbus"
)

// Register adds the "redis" topology to r.
func Register(r *topologies.Registry) error { return r.Register(Topology()) }

// NewClient returns a client for the redis section, or nil when neither
// url nor url_env is set.
//
// With partitions, each partition a process consumes keeps a connection
// in a blocking XREADGROUP; unless the URL sets pool_size, the pool gets
// that many connections on top of go-redis's default (10 per CPU), so
// that one worker holding every partition does not starve the other
// calls (acks, leases, the stores) of connections.
func NewClient(c config.Redis) (*goredis.Client, error) {
	url, err := config.Secret(c.URL, c.URLEnv)
	if err != nil {
		return nil, fmt.Errorf("redis.url_env: %w", err)
	}
	if url == "" {
		return nil, nil
	}
	opts, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis.url: %w", err)
	}
	if opts.PoolSize == 0 && c.Partitions > 0 {
		opts.PoolSize = 10*runtime.GOMAXPROCS(0) + c.Partitions
	}
	return goredis.NewClient(opts), nil
}

// Connect is NewClient followed by a PING, so that a Redis that does not
// answer fails the build with a *topologies.DependencyError naming
// redis.url. It returns a nil client (and no error) when neither url nor
// url_env is set. The returned ready func pings again, for Backend.Ready.
func Connect(ctx context.Context, c config.Redis) (*goredis.Client, func(context.Context) error, error) {
	client, err := NewClient(c)
	if err != nil || client == nil {
		return nil, nil, err
	}
	url, _ := config.Secret(c.URL, c.URLEnv) // NewClient read it already
	key := config.URLKey("redis", "url", c.URLEnv)
	// The first PING goes through a client that tries once: the client's
	// own retries (several dials per command, several commands) would
	// make each start-up attempt last seconds, with a log line per dial.
	probeOpts := *client.Options()
	probeOpts.MaxRetries, probeOpts.DialerRetries = -1, 1
	probe := goredis.NewClient(&probeOpts)
	err = probe.Ping(ctx).Err()
	if cerr := probe.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, nil, errors.Join(topologies.Unreachable("redis", "connect", key, url, err), client.Close())
	}
	ready := func(ctx context.Context) error {
		if err := client.Ping(ctx).Err(); err != nil {
			return topologies.Unreachable("redis", "ping", key, url, err)
		}
		return nil
	}
	return client, ready, nil
}

// Build connects to Redis, opens the stores and, when the process
// captures (role all or capture), the [[sources]].
func Build(ctx context.Context, cfg *config.Config, logger *slog.Logger) (_ *topologies.Backend, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// b, not the result, is what the deferred clean-up closes: a return
	// nil, err leaves the result nil.
	b := &topologies.Backend{}
	defer func() {
		if err != nil {
			err = errors.Join(err, b.Close())
		}
	}()
	client, redisReady, err := Connect(ctx, cfg.Redis)
	if err != nil {
		return nil, err
	}
	if client == nil {
		return nil, errors.New("redis: set redis.url or redis.url_env")
	}
	b.Closers = append(b.Closers, client.Close)
	store, closeStore, err := stores.Open(ctx, "redis", stores.OpenConfig{Redis: client, KeyPrefix: cfg.Redis.KeyPrefix})
	if err != nil {
		return nil, err
	}
	b.Closers = append(b.Closers, closeStore)
	b.Dedup, b.Cache = store, store
	dlq, err := stores.NewRedisDeadLetters(client, stores.RedisDeadLettersConfig{
		Key: cfg.Redis.KeyPrefix + "dlq", MaxEntries: cfg.DLQ.MaxEntries})
	if err != nil {
		return nil, err
	}
	b.DeadLetters = dlq

	bc := BusConfig(cfg)
	b.Publisher = redisbus.NewPublisher(client, bc)
	sub := redisbus.NewSubscriber(client, bc, logger.With("component", "bus"))
	b.Subscriber = sub
	b.Closers = append(b.Closers, sub.Close)
	b.Ready = redisReady
	if cfg.Role != "observe" && len(cfg.Sources) > 0 {
		srcs, err := postgres.OpenSources(ctx, cfg, logger)
		if err != nil {
			return nil, err
		}
		b.Closers = append(b.Closers, srcs.Close)
		b.Captures = srcs.Captures(postgres.BridgeGroup)
		for _, c := range b.Captures {
			b.Closers = append(b.Closers, c.Close)
		}
		// The process captures: a source it cannot read is a dependency
		// lost as much as the bus.
		b.Ready = func(ctx context.Context) error { return errors.Join(redisReady(ctx), srcs.Ready(ctx)) }
	}
	sc := sub.Config()
	logger.Info("redis topology: Redis Streams bus", "stream", sc.Stream(cfg.Router.Topic), "group", sc.Group,
		"consumer", sc.Consumer, "partitions", sc.Partitions, "sources", len(b.Captures))
	return b, nil
}

// BusConfig is the Redis Streams bus's config of cfg.
func BusConfig(cfg *config.Config) redisbus.Config {
	return redisbus.Config{
		Prefix:       cfg.Redis.KeyPrefix,
		Group:        cfg.Redis.Group,
		Consumer:     cfg.Redis.Consumer,
		MaxLen:       cfg.Redis.MaxLen,
		ClaimIdle:    cfg.Redis.ClaimIdle.D(),
		MaxInFlight:  cfg.Router.MaxInFlight,
		DrainTimeout: cfg.Router.ShutdownTimeout.D(),
		Partitions:   cfg.Redis.Partitions,
		PartitionTTL: cfg.Redis.PartitionTTL.D(),
	}
}
