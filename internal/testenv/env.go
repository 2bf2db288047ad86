package testenv

import (
	"crypto/rand"
	"encoding/hex"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Environment variables that point the tests at other servers than the
// default local ones.
const (
	// PostgresURLEnv names the variable read by [PostgresURL].
	PostgresURLEnv = "MILLRACE_TEST_POSTGRES_URL"
	// RedisURLEnv names the variable read by [RedisURL].
	RedisURLEnv = "MILLRACE_TEST_REDIS_URL"
	// NATSURLEnv names the variable read by [NATSURL].
	NATSURLEnv = "MILLRACE_TEST_NATS_URL"
)

// Default URLs of the local services that test/services.sh starts.
const (
	// DefaultPostgresURL is the PostgreSQL server used when
	// MILLRACE_TEST_POSTGRES_URL is not set: role root (a superuser, trust
	// auth), database test.
	DefaultPostgresURL = "postgres://root@127.0.0.1:5432/test?sslmode=disable"
	// DefaultRedisURL is the Redis server used when MILLRACE_TEST_REDIS_URL is
	// not set.
	DefaultRedisURL = "redis://127.0.0.1:6379/0"
	// DefaultNATSURL is the NATS server (with JetStream) used when
	// MILLRACE_TEST_NATS_URL is not set.
	DefaultNATSURL = "nats://127.0.0.1:4222"
)

// connectTimeout bounds every attempt to reach a service, so that a missing
// service fails the test quickly instead of hanging it.
const connectTimeout = 10 * time.Second

// PostgresURL returns the URL of the PostgreSQL server for tests:
// MILLRACE_TEST_POSTGRES_URL when set, [DefaultPostgresURL] otherwise.
func PostgresURL() string { return envOr(PostgresURLEnv, DefaultPostgresURL) }

// RedisURL returns the URL of the Redis server for tests:
// MILLRACE_TEST_REDIS_URL when set, [DefaultRedisURL] otherwise.
func RedisURL() string { return envOr(RedisURLEnv, DefaultRedisURL) }

// NATSURL returns the URL of the NATS server for tests:
// MILLRACE_TEST_NATS_URL when set, [DefaultNATSURL] otherwise.
func NATSURL() string { return envOr(NATSURLEnv, DefaultNATSURL) }

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Name returns a short identifier unique to this call, made of the test's
// name and a random suffix, for example "testorders_retry_3f9a1c07". It
// holds only [a-z0-9_], starts with a letter and is at most 43 bytes long,
// so it can be used unquoted as a PostgreSQL schema name, a Redis key
// prefix, or a NATS stream or bucket name.
func Name(t testing.TB) string {
	const maxBase = 32
	var b strings.Builder
	underscore := false
	for _, r := range strings.ToLower(t.Name()) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			underscore = false
		} else if !underscore && b.Len() > 0 {
			b.WriteByte('_')
			underscore = true
		}
		if b.Len() >= maxBase {
			break
		}
	}
	base := strings.TrimRight(b.String(), "_")
	switch {
	case base == "":
		base = "t"
	case base[0] < 'a' || base[0] > 'z':
		base = "t_" + base
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:]) // crypto/rand.Read never fails on Linux.
	return base + "_" + hex.EncodeToString(suffix[:])
}

// FreePort returns a TCP port on 127.0.0.1 that was free when it was
// checked, for a server a test starts. Another process may take it before
// the caller binds it; to make that unlikely the port is not one the
// kernel hands out itself: it is drawn below the ephemeral range
// (net.ipv4.ip_local_port_range, 32768-60999 by default), from which
// every outgoing connection of every test takes its local port, and a
// port listened on with ":0" would come. It is also never the same twice
// in one test binary.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 1000 {
		port := freePortLow + mrand.IntN(freePortHigh-freePortLow)
		freePorts.Lock()
		taken := freePorts.given[port]
		freePorts.given[port] = true
		freePorts.Unlock()
		if taken {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue // in use
		}
		if err := l.Close(); err != nil {
			t.Fatalf("testenv: cannot release port %d: %v", port, err)
		}
		return port
	}
	t.Fatalf("testenv: no free port in [%d, %d) after 1000 tries", freePortLow, freePortHigh)
	return 0
}

// The range FreePort draws from: below the kernel's ephemeral ports.
const freePortLow, freePortHigh = 20000, 32768

var freePorts = struct {
	sync.Mutex
	given map[int]bool
}{given: map[int]bool{}}

// unreachable fails the test because a service could not be reached.
func unreachable(t testing.TB, service, rawURL, envVar string, err error) {
	t.Helper()
	t.Fatalf("testenv: cannot reach %s at %s: %v\n"+
		"\t`make test` runs test/services.sh, which starts PostgreSQL, Redis and NATS;"+
		" set %s to use another server", service, redact(rawURL), err, envVar)
}

var dsnPassword = regexp.MustCompile(`(password\s*=\s*)('(\\.|[^'])*'|\S+)`)

// redact hides the password of a URL (or of a PostgreSQL keyword/value
// connection string) before it is printed.
func redact(s string) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	return dsnPassword.ReplaceAllString(s, "${1}xxxxx")
}
