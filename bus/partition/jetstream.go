package partition

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// KVLeases keeps the leases in a JetStream key-value bucket whose TTL is
// the lease TTL: a key lives TTL after its last write, so a lease or a
// membership that is not renewed disappears by itself. Writes are
// compare-and-set on the key's revision.
type KVLeases struct {
	kv jetstream.KeyValue
}

var _ Leases = (*KVLeases)(nil)

const (
	memberKey    = "member."
	partitionKey = "partition."
)

// NewKVLeases creates the bucket, or updates it to ttl, and returns the
// leases in it. Every worker of one bus must use the same bucket and ttl.
func NewKVLeases(ctx context.Context, js jetstream.JetStream, bucket string, ttl time.Duration, replicas int) (*KVLeases, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:   bucket,
		History:  1,
		TTL:      ttl,
		Storage:  jetstream.FileStorage,
		Replicas: max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("partition: key-value bucket %s: %w", bucket, err)
	}
	return &KVLeases{kv: kv}, nil
}

// Join implements Leases. The bucket's TTL is the one that counts.
func (l *KVLeases) Join(ctx context.Context, member string, _ time.Duration) ([]string, error) {
	if _, err := l.kv.Put(ctx, memberKey+member, nil); err != nil {
		return nil, fmt.Errorf("partition: join: %w", err)
	}
	// One listing of the whole bucket: a filtered one needs NATS 2.10.
	lister, err := l.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("partition: list members: %w", err)
	}
	defer func() { _ = lister.Stop() }()
	var members []string
	for k := range lister.Keys() {
		if m, ok := strings.CutPrefix(k, memberKey); ok {
			members = append(members, m)
		}
	}
	return members, nil
}

// Acquire implements Leases.
func (l *KVLeases) Acquire(ctx context.Context, p int, member string, _ time.Duration) (bool, error) {
	key := partitionKey + strconv.Itoa(p)
	e, err := l.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		_, err = l.kv.Create(ctx, key, []byte(member))
		if errors.Is(err, jetstream.ErrKeyExists) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("partition: acquire %d: %w", p, err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("partition: acquire %d: %w", p, err)
	case string(e.Value()) != member:
		return false, nil
	}
	if _, err := l.kv.Update(ctx, key, []byte(member), e.Revision()); err != nil {
		if isWrongRevision(err) {
			return false, nil
		}
		return false, fmt.Errorf("partition: renew %d: %w", p, err)
	}
	return true, nil
}

// Release implements Leases.
func (l *KVLeases) Release(ctx context.Context, p int, member string) error {
	key := partitionKey + strconv.Itoa(p)
	e, err := l.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("partition: release %d: %w", p, err)
	}
	if string(e.Value()) != member {
		return nil
	}
	if err := l.kv.Delete(ctx, key, jetstream.LastRevision(e.Revision())); err != nil && !isWrongRevision(err) {
		return fmt.Errorf("partition: release %d: %w", p, err)
	}
	return nil
}

// Leave implements Leases.
func (l *KVLeases) Leave(ctx context.Context, member string) error {
	if err := l.kv.Delete(ctx, memberKey+member); err != nil {
		return fmt.Errorf("partition: leave: %w", err)
	}
	return nil
}

// isWrongRevision: another writer changed the key since it was read.
func isWrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
