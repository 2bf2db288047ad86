package topologies

import (
	"strings"
	"testing"

	"github.com/millrace/millrace/config"
)

// A URL with master_name reaches the master through Sentinel; anything
// go-redis's failover form does not take is refused naming the key.
func TestRedisSentinelURL(t *testing.T) {
	c, err := NewRedisClient(config.Redis{URL: "redis://127.0.0.1:26379/0?master_name=millrace&addr=127.0.0.1:26380"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// go-redis names the failover client's address so.
	if got := c.Options().Addr; got != "FailoverClient" {
		t.Errorf("client address %q: not a Sentinel (failover) client", got)
	}
	if _, err := NewRedisClient(config.Redis{URL: "redis://127.0.0.1:26379/0?master_name=millrace&no_such_option=1"}); err == nil ||
		!strings.Contains(err.Error(), "redis.url (Sentinel)") {
		t.Errorf("a bad Sentinel URL gave %v, want an error naming redis.url (Sentinel)", err)
	}
	c, err = NewRedisClient(config.Redis{URL: "redis://127.0.0.1:6379/0"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.Options().Addr; got != "127.0.0.1:6379" {
		t.Errorf("a plain URL gave client address %q", got)
	}
}
