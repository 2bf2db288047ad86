// Package testenv connects integration tests to the real PostgreSQL, Redis
// and NATS JetStream services.
//
// Tests never mock these services and never skip when one is missing: a
// service that cannot be reached fails the test with the URL that was tried.
// `make test` runs test/services.sh first, which starts whatever is not
// already running (installing it from the distribution's packages when
// needed).
//
// # Where the services are
//
// By default the services are the ones on their standard local ports:
//
//	PostgreSQL  postgres://root@127.0.0.1:5432/test?sslmode=disable
//	Redis       redis://127.0.0.1:6379/0
//	NATS        nats://127.0.0.1:4222
//
// MILLRACE_TEST_POSTGRES_URL, MILLRACE_TEST_REDIS_URL and
// MILLRACE_TEST_NATS_URL point the tests at other servers; test/services.sh
// leaves a service alone when its variable is set.
//
// # Isolation
//
// Tests share the servers, and may run in parallel, so each one works in its
// own namespace, named by [Name]:
//
//   - [Postgres] creates a fresh schema and returns a pool whose search_path is
//     that schema; the schema is dropped with CASCADE when the test ends.
//   - [Redis] returns a key prefix; every key starting with it is deleted when
//     the test ends. Tests must put the prefix in front of every key they use.
//   - [NATS] returns a prefix; every stream, key-value bucket and object store
//     bucket whose name starts with it (compared without regard to case) is
//     deleted when the test ends. Test streams and buckets must be named with
//     the prefix first, for example strings.ToUpper(prefix)+"_EVENTS".
//
// Tests that must stop and restart a server use [StartRedis], which runs a
// private redis-server on a free port.
package testenv
