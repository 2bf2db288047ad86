package stores

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/millrace/millrace/bus"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStreamDeadLettersConfig configures a JetStreamDeadLetters store.
type JetStreamDeadLettersConfig struct {
	// Stream is the stream holding the entries, e.g. "MILLRACE_DLQ".
	// Required.
	Stream string
	// Subject is the subject root of the entries, e.g. "millrace_dlq";
	// each entry goes to Subject + "." + its observer. It must not overlap
	// the subjects of another stream: "millrace.dlq" would fall under the
	// event stream's "millrace.>", which JetStream refuses. Required.
	Subject string
	// MaxEntries caps the stream (the oldest entries go first); 0 keeps
	// everything.
	MaxEntries int
	// Replicas is the stream's replica count; 0 means 1.
	Replicas int
	// Memory keeps the stream in memory instead of files. The store is
	// durable only with file storage, the default.
	Memory bool
}

// Validate reports missing fields.
func (c JetStreamDeadLettersConfig) Validate() error {
	var errs []error
	if c.Stream == "" {
		errs = append(errs, errors.New("jetstream dead letters: Stream is required"))
	}
	if c.Subject == "" || strings.ContainsAny(c.Subject, "*> \t") {
		errs = append(errs, fmt.Errorf("jetstream dead letters: Subject %q must be a literal subject", c.Subject))
	}
	if c.MaxEntries < 0 {
		errs = append(errs, errors.New("jetstream dead letters: MaxEntries must not be negative"))
	}
	return errors.Join(errs...)
}

// JetStreamDeadLetters keeps dead letters in a JetStream stream of their
// own, one message per entry. The entry's id is the message's stream
// sequence, so Get and Delete are single requests. The message data is
// the payload as it was (no base64 inflation, which would push an event
// near the server's max_payload over it) and the other fields travel as
// JSON in a header. The subject carries the observer, so List with an
// observer filter reads only that observer's entries, and List with a
// start time starts near it instead of at the beginning of the stream.
type JetStreamDeadLetters struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	cfg    JetStreamDeadLettersConfig
}

var _ DeadLetters = (*JetStreamDeadLetters)(nil)

// jsEntryHeader holds the entry's fields except ID and Payload.
const jsEntryHeader = "Millrace-Dead-Letter"

// NewJetStreamDeadLetters creates or updates the stream and returns the
// store. It does not own js.
func NewJetStreamDeadLetters(ctx context.Context, js jetstream.JetStream, cfg JetStreamDeadLettersConfig) (*JetStreamDeadLetters, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	sc := jetstream.StreamConfig{
		Name:        cfg.Stream,
		Description: "millrace dead letters",
		Subjects:    []string{cfg.Subject + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxMsgs:     -1,
		Replicas:    max(cfg.Replicas, 1),
		Storage:     jetstream.FileStorage,
	}
	if cfg.MaxEntries > 0 {
		sc.MaxMsgs = int64(cfg.MaxEntries)
	}
	if cfg.Memory {
		sc.Storage = jetstream.MemoryStorage
	}
	s, err := js.CreateOrUpdateStream(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("jetstream dead letters: ensure stream %s: %w", cfg.Stream, err)
	}
	return &JetStreamDeadLetters{js: js, stream: s, cfg: cfg}, nil
}

// Put stores dl and returns its id, the stream sequence.
func (s *JetStreamDeadLetters) Put(ctx context.Context, dl DeadLetter) (string, error) {
	dl = normalizeEntry(dl)
	meta := dl
	meta.ID, meta.Payload = "", nil
	h, err := json.Marshal(meta)
	if err != nil {
		return "", fmt.Errorf("jetstream dead letters: encode: %w", err)
	}
	m := nats.NewMsg(s.subject(dl.Observer))
	m.Header.Set(jsEntryHeader, string(h))
	m.Data = dl.Payload
	ack, err := s.js.PublishMsg(ctx, m, jetstream.WithExpectStream(s.cfg.Stream))
	if err != nil {
		return "", fmt.Errorf("jetstream dead letters: put: %w", err)
	}
	return strconv.FormatUint(ack.Sequence, 10), nil
}

func (s *JetStreamDeadLetters) subject(observer string) string {
	return s.cfg.Subject + "." + bus.Token(observer)
}

// Get returns the entry with id, or an error wrapping ErrNotFound.
func (s *JetStreamDeadLetters) Get(ctx context.Context, id string) (DeadLetter, error) {
	seq, err := strconv.ParseUint(id, 10, 64)
	if err != nil || seq == 0 {
		return DeadLetter{}, fmt.Errorf("jetstream dead letters: %q: %w", id, ErrNotFound)
	}
	raw, err := s.stream.GetMsg(ctx, seq)
	if err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return DeadLetter{}, fmt.Errorf("jetstream dead letters: %q: %w", id, ErrNotFound)
		}
		return DeadLetter{}, fmt.Errorf("jetstream dead letters: get %s: %w", id, err)
	}
	return decodeJSEntry(raw.Sequence, raw.Header, raw.Data)
}

func decodeJSEntry(seq uint64, h nats.Header, data []byte) (DeadLetter, error) {
	var dl DeadLetter
	if err := json.Unmarshal([]byte(h.Get(jsEntryHeader)), &dl); err != nil {
		return DeadLetter{}, fmt.Errorf("jetstream dead letters: entry %d: %w", seq, err)
	}
	dl.ID = strconv.FormatUint(seq, 10)
	dl.Payload = data
	if dl.Payload == nil {
		dl.Payload = []byte{}
	}
	return dl, nil
}

// List reads the matching entries, oldest first, through an ephemeral
// consumer filtered on the observer's subject and started near Since, so
// its cost follows the entries it may return rather than the whole
// stream.
func (s *JetStreamDeadLetters) List(ctx context.Context, f DeadLetterFilter) ([]DeadLetter, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	filter := s.cfg.Subject + ".>"
	if f.Observer != "" {
		filter = s.subject(f.Observer)
	}
	cc := jetstream.ConsumerConfig{
		AckPolicy:         jetstream.AckNonePolicy,
		FilterSubject:     filter,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		InactiveThreshold: time.Minute,
		MemoryStorage:     true,
		Replicas:          1,
	}
	if !f.Since.IsZero() {
		start := f.Since.Add(-sinceSlack)
		cc.DeliverPolicy, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	cons, err := s.stream.CreateConsumer(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("jetstream dead letters: list: %w", err)
	}
	defer func() {
		// A fresh context: the caller's may be done, and the server would
		// otherwise keep the consumer until its inactivity threshold.
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.stream.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}()
	pending := cons.CachedInfo().NumPending
	out := []DeadLetter{}
	var seen uint64
	for seen < pending && len(out) < limit {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		batch, err := cons.Fetch(int(min(pending-seen, 500)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, fmt.Errorf("jetstream dead letters: list: %w", err)
		}
		n, last := 0, false
		for m := range batch.Messages() {
			n++
			seen++
			md, err := m.Metadata()
			if err != nil {
				return nil, fmt.Errorf("jetstream dead letters: list: %w", err)
			}
			last = md.NumPending == 0
			if len(out) >= limit {
				continue
			}
			dl, err := decodeJSEntry(md.Sequence.Stream, m.Headers(), m.Data())
			if err != nil {
				return nil, err
			}
			if matches(dl, f) {
				out = append(out, dl)
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("jetstream dead letters: list: %w", err)
		}
		if last {
			break
		}
		if n == 0 {
			// An empty batch: entries deleted meanwhile left the pending
			// count short, or a loaded server did not answer within the
			// fetch's wait. Only the consumer's own count tells them
			// apart; ending the scan on the second returned a short list
			// (a restarted process then loaded no parked entities).
			info, err := cons.Info(ctx)
			if err != nil {
				return nil, fmt.Errorf("jetstream dead letters: list: %w", err)
			}
			if info.NumPending == 0 {
				break
			}
		}
	}
	return out, nil
}

// Delete removes the entries; ids that are unknown are ignored.
func (s *JetStreamDeadLetters) Delete(ctx context.Context, ids ...string) error {
	var errs []error
	for _, id := range ids {
		seq, err := strconv.ParseUint(id, 10, 64)
		if err != nil || seq == 0 {
			continue
		}
		if err := s.stream.DeleteMsg(ctx, seq); err != nil && !isNoMessage(err) {
			errs = append(errs, fmt.Errorf("jetstream dead letters: delete %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// isNoMessage recognizes the server's answer to deleting a sequence that
// is gone or never was: JSStreamMsgDeleteFailedF (10057) with "no message
// found", or "stream store EOF" past the last sequence. nats.go passes
// that answer on as text only.
func isNoMessage(err error) bool {
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return true
	}
	msg := err.Error()
	return errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) && strings.Contains(msg, "err_code=10057") &&
		(strings.Contains(msg, "no message found") || strings.Contains(msg, "EOF"))
}

// Purge removes every entry written before the call and returns their
// number; entries written concurrently are kept.
func (s *JetStreamDeadLetters) Purge(ctx context.Context) (int, error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("jetstream dead letters: purge: %w", err)
	}
	if info.State.Msgs == 0 {
		return 0, nil
	}
	if err := s.stream.Purge(ctx, jetstream.WithPurgeSequence(info.State.LastSeq+1)); err != nil {
		return 0, fmt.Errorf("jetstream dead letters: purge: %w", err)
	}
	return int(info.State.Msgs), nil
}

// Count returns the number of entries, from the stream's state.
func (s *JetStreamDeadLetters) Count(ctx context.Context) (int, error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("jetstream dead letters: count: %w", err)
	}
	return int(info.State.Msgs), nil
}
