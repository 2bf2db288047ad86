package router

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/topologies"
)

// resources opens the shared clients that actions ask for, once each,
// and closes them at shutdown.
type resources struct {
	cfg *config.Config

	mu    sync.Mutex
	redis redis.UniversalClient
	pools map[string]*pgxpool.Pool
}

func (r *resources) Redis() (redis.UniversalClient, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.redis != nil {
		return r.redis, nil
	}
	client, err := topologies.NewRedisClient(r.cfg.Redis)
	if err != nil {
		return nil, err
	}
	if client == nil {
		return nil, errors.New("redis: set redis.url or redis.url_env")
	}
	r.redis = client
	return r.redis, nil
}

func (r *resources) Database(name string) (*pgxpool.Pool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.pools[name]; ok {
		return p, nil
	}
	d, ok := r.cfg.Databases[name]
	if !ok {
		return nil, fmt.Errorf("databases.%s is not configured", name)
	}
	url, err := config.Secret(d.URL, d.URLEnv)
	if err != nil {
		return nil, fmt.Errorf("databases.%s.url_env: %w", name, err)
	}
	p, err := pgxpool.New(context.Background(), url)
	if err != nil {
		return nil, fmt.Errorf("databases.%s: %w", name, err)
	}
	if r.pools == nil {
		r.pools = map[string]*pgxpool.Pool{}
	}
	r.pools[name] = p
	return p, nil
}

func (r *resources) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var err error
	if r.redis != nil {
		err = r.redis.Close()
		r.redis = nil
	}
	for _, p := range r.pools {
		p.Close()
	}
	r.pools = nil
	return err
}
