package jetstream

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	njs "github.com/nats-io/nats.go/jetstream"

	"github.com/millrace/millrace/internal/testenv"
)

// pubConfig returns a config whose stream is made by the test.
func pubConfig(prefix string) Config {
	return Config{Stream: strings.ToUpper(prefix), SubjectPrefix: prefix}
}

func newMsgs(ids ...string) []*message.Message {
	msgs := make([]*message.Message, len(ids))
	for i, id := range ids {
		msgs[i] = message.NewMessage(id, []byte(`{"n":`+id[len(id)-1:]+`}`))
	}
	return msgs
}

// TestPublishNamesTheRejectedMessage: in a call of three messages to a
// stream that takes two, the third's error is the stream's and names
// it; the first two are stored and not reported.
func TestPublishNamesTheRejectedMessage(t *testing.T) {
	_, js, prefix := testenv.NATS(t)
	cfg := pubConfig(prefix)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, njs.StreamConfig{
		Name: cfg.Stream, Subjects: cfg.StreamSubjects(), MaxMsgs: 2, Discard: njs.DiscardNew, Storage: njs.MemoryStorage,
	}); err != nil {
		t.Fatal(err)
	}
	p := NewPublisher(js, cfg)
	defer p.Close()
	msgs := newMsgs("00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002", "00000000-0000-4000-8000-000000000003")
	err := p.Publish("events", msgs...)
	var api *njs.APIError
	if !errors.As(err, &api) || !strings.Contains(err.Error(), msgs[2].UUID) {
		t.Fatalf("err = %v; want the stream's API error naming %s", err, msgs[2].UUID)
	}
	for _, m := range msgs[:2] {
		if strings.Contains(err.Error(), m.UUID) {
			t.Errorf("err names %s, which the stream stored: %v", m.UUID, err)
		}
	}
	s, err := js.Stream(ctx, cfg.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != 2 {
		t.Fatalf("stream info %v, %v; want 2 messages", info, err)
	}
	// The publisher goes on working after a rejection.
	if err := s.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish("events", newMsgs("00000000-0000-4000-8000-000000000004")...); err != nil {
		t.Fatalf("publish after the purge: %v", err)
	}
}

// TestPublishWithoutStream: a subject that no stream captures fails
// with no-responders, at once.
func TestPublishWithoutStream(t *testing.T) {
	_, js, prefix := testenv.NATS(t)
	p := NewPublisher(js, pubConfig(prefix))
	defer p.Close()
	start := time.Now()
	err := p.Publish("events", newMsgs("00000000-0000-4000-8000-000000000001")...)
	if !errors.Is(err, njs.ErrNoStreamResponse) {
		t.Fatalf("err = %v; want %v", err, njs.ErrNoStreamResponse)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %s; want no wait for the ack timeout", d)
	}
}

// silent subscribes a plain NATS subscriber that never replies to the
// test's subjects: a publish there gets neither an ack nor
// no-responders.
func silent(t *testing.T, nc *nats.Conn, cfg Config) {
	t.Helper()
	sub, err := nc.SubscribeSync(cfg.SubjectPrefix + ".>")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestPublishTimesOut: messages without an ack fail after the timeout,
// each named, and a later publish still works.
func TestPublishTimesOut(t *testing.T) {
	nc, js, prefix := testenv.NATS(t)
	cfg := pubConfig(prefix)
	silent(t, nc, cfg)
	p := NewPublisher(js, cfg)
	defer p.Close()
	p.timeout = 300 * time.Millisecond
	msgs := newMsgs("00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002")
	err := p.Publish("events", msgs...)
	for _, m := range msgs {
		if err == nil || !strings.Contains(err.Error(), m.UUID+": no ack within 300ms") {
			t.Fatalf("err = %v; want no ack for %s", err, m.UUID)
		}
	}
	p.mu.Lock()
	left := len(p.calls)
	p.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d calls still registered after the timeout", left)
	}
}

// TestPublishCloseEndsTheWait: Close fails a call waiting for its acks.
func TestPublishCloseEndsTheWait(t *testing.T) {
	nc, js, prefix := testenv.NATS(t)
	cfg := pubConfig(prefix)
	silent(t, nc, cfg)
	p := NewPublisher(js, cfg)
	done := make(chan error, 1)
	go func() { done <- p.Publish("events", newMsgs("00000000-0000-4000-8000-000000000001")...) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		n := len(p.calls)
		p.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the call never registered")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "publisher closed before its ack") {
			t.Fatalf("err = %v; want the close", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Publish still waiting after Close")
	}
	if err := p.Publish("events", newMsgs("00000000-0000-4000-8000-000000000002")...); err == nil {
		t.Fatal("Publish after Close succeeded")
	}
}

func TestAckError(t *testing.T) {
	status := func(code string) nats.Header { return nats.Header{"Status": []string{code}} }
	for _, tc := range []struct {
		name string
		msg  *nats.Msg
		want string // "" for nil
	}{
		{"ack", &nats.Msg{Data: []byte(`{"stream":"S", "seq":12}`)}, ""},
		{"duplicate", &nats.Msg{Data: []byte(`{"stream":"S", "seq":12,"duplicate": true}`)}, ""},
		{"stream named error", &nats.Msg{Data: []byte(`{"stream":"error", "seq":1}`)}, ""},
		{"other field order", &nats.Msg{Data: []byte(`{"seq":3,"stream":"S"}`)}, ""},
		{"api error", &nats.Msg{Data: []byte(`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"S","seq":0}`)}, "maximum messages exceeded"},
		{"no responders", &nats.Msg{Header: status("503")}, njs.ErrNoStreamResponse.Error()},
		{"other status", &nats.Msg{Header: status("408")}, `status "408"`},
		{"not json", &nats.Msg{Data: []byte(`+OK`)}, "reply to a publish"},
		{"no stream", &nats.Msg{Data: []byte(`{"seq":3}`)}, "names no stream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ackError(tc.msg)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("ackError = %v; want %q", err, tc.want)
			}
		})
	}
}
