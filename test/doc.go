// Package test runs each example config of topologies/ as real millrace
// processes against the real services (topologies_test.go); its
// sub-packages are the end-to-end suites (conformance, crash, fault,
// badinput, security, deploy). Their helpers, internal/e2e and
// internal/testenv, are internal so that custom binaries do not pin
// them. See docs/testing.md.
package test
