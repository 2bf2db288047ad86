package redis

import (
	"context"
	"errors"
	"log/slog"

	"github.com/millrace/millrace/stores"

	"github.com/millrace/millrace/bus/redisstream"
	"github.com/millrace/millrace/bus/watermill"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
)

// Register adds the "redis" topology to r.
func Register(r *topologies.Registry) error { return r.Register(Topology()) }

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
	client, redisReady, err := topologies.ConnectRedis(ctx, cfg.Redis)
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
	sc := bc // as the bus completes it, for the log
	sc.SetDefaults()
	if cfg.Bus.Driver == config.DriverWatermill {
		pub, sub, err := watermill.NewRedis(client, bc, logger.With("component", "bus"))
		if err != nil {
			return nil, err
		}
		b.Publisher, b.Subscriber = pub, sub
		b.Closers = append(b.Closers, sub.Close)
	} else {
		sub := redisstream.NewSubscriber(client, bc, logger.With("component", "bus"))
		b.Publisher, b.Subscriber = redisstream.NewPublisher(client, bc), sub
		b.Closers = append(b.Closers, sub.Close)
		sc = sub.Config()
	}
	b.Ready = redisReady
	b.Lag = topologies.RedisLag(client, sc, cfg.Router.Topic)
	if cfg.Role != "observe" && len(cfg.Sources) > 0 {
		srcs, err := topologies.OpenSources(ctx, cfg, logger)
		if err != nil {
			return nil, err
		}
		b.Closers = append(b.Closers, srcs.Close)
		b.Captures = srcs.Captures(topologies.BridgeGroup)
		b.Collectors = append(b.Collectors, srcs.WALMetrics.Collectors()...)
		for _, c := range b.Captures {
			b.Closers = append(b.Closers, c.Close)
		}
		// The process captures: a source it cannot read is a dependency
		// lost as much as the bus.
		b.Ready = func(ctx context.Context) error { return errors.Join(redisReady(ctx), srcs.Ready(ctx)) }
	}
	logger.Info("redis topology: Redis Streams bus", "driver", cfg.Bus.Driver, "stream", sc.Stream(cfg.Router.Topic), "group", sc.Group,
		"consumer", sc.Consumer, "partitions", sc.Partitions, "sources", len(b.Captures))
	return b, nil
}

// BusConfig is the Redis Streams bus's config of cfg.
func BusConfig(cfg *config.Config) redisstream.Config {
	return redisstream.Config{
		Prefix:       cfg.Redis.KeyPrefix,
		Group:        cfg.Redis.Group,
		Consumer:     cfg.Redis.Consumer,
		MaxLen:       cfg.Redis.MaxLen,
		ClaimIdle:    cfg.Redis.ClaimIdle.D(),
		MaxInFlight:  cfg.Router.MaxInFlight,
		MaxBuffered:  cfg.Router.MaxBuffered,
		DrainTimeout: cfg.Router.ShutdownTimeout.D(),
		Partitions:   cfg.Redis.Partitions,
		PartitionTTL: cfg.Redis.PartitionTTL.D(),
		WaitReplicas: cfg.Redis.WaitReplicas,
		WaitTimeout:  cfg.Redis.WaitTimeout.D(),
	}
}
