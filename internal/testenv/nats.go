package testenv

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATS connects to [NATSURL], checks that JetStream is enabled, and returns
// the connection, a JetStream handle and a name prefix, [Name](t).
//
// When the test ends the connection is closed and every stream whose name
// starts with the prefix is deleted, as is every key-value bucket and object
// store bucket whose name starts with it (their streams are KV_<bucket> and
// OBJ_<bucket>). Names are compared without regard to case, so test streams
// and buckets must start with the prefix in either case, for example
// strings.ToUpper(prefix)+"_EVENTS"; anything else the test creates is left
// behind.
//
// The test fails at once when NATS cannot be reached or has no JetStream.
func NATS(t testing.TB) (nc *nats.Conn, js jetstream.JetStream, prefix string) {
	t.Helper()
	rawURL := NATSURL()
	nc, js = connectNATS(t, rawURL)
	prefix = Name(t)
	t.Cleanup(func() {
		nc.Close() // the test may have closed it already
		deleteStreams(t, rawURL, prefix)
	})
	return nc, js, prefix
}

func connectNATS(t testing.TB, rawURL string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(rawURL, nats.Name("millrace test "+t.Name()), nats.Timeout(connectTimeout))
	if err != nil {
		unreachable(t, "NATS", rawURL, NATSURLEnv, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		t.Fatalf("testenv: cannot use JetStream at %s: %v", redact(rawURL), err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		nc.Close()
		t.Fatalf("testenv: JetStream is not available at %s: %v\n"+
			"\tthe server must run with JetStream enabled (nats-server -js), as test/services.sh starts it",
			redact(rawURL), err)
	}
	return nc, js
}

// deleteStreams removes the streams, key-value buckets and object stores of
// a test, over a connection of its own.
func deleteStreams(t testing.TB, rawURL, prefix string) {
	t.Helper()
	nc, js := connectNATS(t, rawURL)
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*connectTimeout)
	defer cancel()

	var names []string
	lister := js.StreamNames(ctx)
	for name := range lister.Name() {
		if ownedStream(name, prefix) {
			names = append(names, name)
		}
	}
	if err := lister.Err(); err != nil {
		t.Errorf("testenv: cannot list JetStream streams: %v", err)
	}
	for _, name := range names {
		if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Errorf("testenv: cannot delete JetStream stream %s: %v", name, err)
		}
	}
}

// ownedStream reports whether a stream belongs to the test with this
// prefix: a stream named after it, or the stream behind a key-value or
// object store bucket named after it.
func ownedStream(stream, prefix string) bool {
	s, p := strings.ToLower(stream), strings.ToLower(prefix)
	return strings.HasPrefix(s, p) || strings.HasPrefix(s, "kv_"+p) || strings.HasPrefix(s, "obj_"+p)
}
