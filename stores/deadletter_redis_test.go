package stores_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/millrace/millrace/internal/testenv"
	"github.com/millrace/millrace/stores"
)

func TestRedisDeadLetters(t *testing.T) {
	client, prefix := testenv.Redis(t)
	var n atomic.Int32
	testDeadLetters(t, func(t *testing.T) stores.DeadLetters {
		s, err := stores.NewRedisDeadLetters(client, stores.RedisDeadLettersConfig{Key: fmt.Sprintf("%sdlq%d", prefix, n.Add(1))})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestRedisDeadLettersMaxEntries(t *testing.T) {
	client, prefix := testenv.Redis(t)
	s, err := stores.NewRedisDeadLetters(client, stores.RedisDeadLettersConfig{Key: prefix + "dlq", MaxEntries: 100})
	if err != nil {
		t.Fatal(err)
	}
	// MAXLEN ~ trims whole radix-tree nodes (100 entries each by
	// default), so up to one node more than the cap may remain.
	assertCapped(t, s, 100, 200)
}

func TestRedisDeadLettersConfig(t *testing.T) {
	for _, c := range []stores.RedisDeadLettersConfig{{}, {Key: "k", MaxEntries: -1}} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil; want an error", c)
		}
	}
}
