package postgres

import (
	"context"
	"errors"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/millrace/millrace/bus/capture"
)

// mergedSubscriber reads several change logs for one group and releases
// their messages on one channel; each keeps its own order, lease and
// checkpoint.
type mergedSubscriber struct {
	subs  []*capture.Subscriber
	group string

	mu     sync.Mutex
	closed bool
	stop   chan struct{}
}

var _ message.Subscriber = (*mergedSubscriber)(nil)

func newMerged(subs []*capture.Subscriber, group string) *mergedSubscriber {
	return &mergedSubscriber{subs: subs, group: group, stop: make(chan struct{})}
}

// Subscribe reads every change log for the group; topic is not used. The
// channel closes once every change log's channel closed.
func (m *mergedSubscriber) Subscribe(ctx context.Context, _ string) (<-chan *message.Message, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errors.New("postgres: subscriber closed")
	}
	chans := make([]<-chan *message.Message, 0, len(m.subs))
	for _, s := range m.subs {
		ch, err := s.Subscribe(ctx, m.group)
		if err != nil {
			return nil, err
		}
		chans = append(chans, ch)
	}
	out := make(chan *message.Message)
	var wg sync.WaitGroup
	for _, ch := range chans {
		wg.Go(func() {
			for msg := range ch {
				select {
				case out <- msg:
				case <-m.stop:
					// Not taken: the change log releases it again.
				}
			}
		})
	}
	go func() {
		wg.Wait()
		close(out)
	}()
	return out, nil
}

// Close stops every change log's reader.
func (m *mergedSubscriber) Close() error {
	m.mu.Lock()
	if !m.closed {
		m.closed = true
		close(m.stop)
	}
	m.mu.Unlock()
	var errs []error
	for _, s := range m.subs {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}
