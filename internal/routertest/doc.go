// Package routertest runs a millrace router in the test's process, for
// the tests of packages that talk to a running millrace (its HTTP API,
// the CLI's admin commands).
package routertest
