package topologies

import (
	"context"
	"errors"
	"fmt"
	neturl "net/url"
	"runtime"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/millrace/millrace/config"
)

// NewRedisClient returns a client for the redis section, or nil when neither
// url nor url_env is set.
//
// With partitions, each partition a process consumes keeps a connection
// in a blocking XREADGROUP; unless the URL sets pool_size, the pool gets
// that many connections on top of go-redis's default (10 per CPU), so
// that one worker holding every partition does not starve the other
// calls (acks, leases, the stores) of connections.
func NewRedisClient(c config.Redis) (*goredis.Client, error) {
	url, err := config.Secret(c.URL, c.URLEnv)
	if err != nil {
		return nil, fmt.Errorf("redis.url_env: %w", err)
	}
	if url == "" {
		return nil, nil
	}
	if isSentinelURL(url) {
		opts, err := goredis.ParseFailoverURL(url)
		if err != nil {
			return nil, fmt.Errorf("redis.url (Sentinel): %w", err)
		}
		opts.PoolSize = poolSize(opts.PoolSize, c)
		return goredis.NewFailoverClient(opts), nil
	}
	opts, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis.url: %w", err)
	}
	opts.PoolSize = poolSize(opts.PoolSize, c)
	return goredis.NewClient(opts), nil
}

// poolSize is the pool size of the client: the URL's pool_size when set,
// else, with partitions, go-redis's default plus one connection per
// partition (see NewRedisClient).
func poolSize(set int, c config.Redis) int {
	if set == 0 && c.Partitions > 0 {
		return 10*runtime.GOMAXPROCS(0) + c.Partitions
	}
	return set
}

// isSentinelURL reports whether url names a master through Sentinel:
// redis://sentinel-1:26379/0?master_name=mymaster&addr=sentinel-2:26379
// (go-redis's ParseFailoverURL form). The client then asks the sentinels
// for the master, and again after a failover.
func isSentinelURL(url string) bool {
	u, err := neturl.Parse(url)
	return err == nil && u.Query().Has("master_name")
}

// ConnectRedis is NewRedisClient followed by a PING, so that a Redis that does not
// answer fails the build with a *DependencyError naming
// redis.url. It returns a nil client (and no error) when neither url nor
// url_env is set. The returned ready func pings again, for Backend.Ready.
func ConnectRedis(ctx context.Context, c config.Redis) (*goredis.Client, func(context.Context) error, error) {
	client, err := NewRedisClient(c)
	if err != nil || client == nil {
		return nil, nil, err
	}
	url, _ := config.Secret(c.URL, c.URLEnv) // NewRedisClient read it already
	key := config.URLKey("redis", "url", c.URLEnv)
	// The first PING goes through a client that tries once: the client's
	// own retries (several dials per command, several commands) would
	// make each start-up attempt last seconds, with a log line per dial.
	probeOpts := *client.Options()
	probeOpts.MaxRetries, probeOpts.DialerRetries = -1, 1
	// The copy shares the client's push-notification handlers: with
	// maintenance notifications on, the probe's own registration fails
	// and go-redis logs it at every start. A one-off PING needs none.
	probeOpts.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	probe := goredis.NewClient(&probeOpts)
	err = probe.Ping(ctx).Err()
	if cerr := probe.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, nil, errors.Join(Unreachable("redis", "connect", key, url, err), client.Close())
	}
	ready := func(ctx context.Context) error {
		if err := client.Ping(ctx).Err(); err != nil {
			return Unreachable("redis", "ping", key, url, err)
		}
		return nil
	}
	return client, ready, nil
}
