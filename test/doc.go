// Package test runs each example config of topologies/ as real millrace
// processes against the real services (topologies_test.go); its
// sub-packages are the end-to-end suites (conformance, crash, fault,
// badinput, security, deploy) and their helpers (e2e, testenv). See
// docs/testing.md.
package test
