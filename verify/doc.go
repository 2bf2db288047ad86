// Package verify checks a millrace deployment end to end against the
// user's own services (millrace verify -c FILE): it derives from the
// user's config a scratch config (same topology and services, scratch
// table, stream, key prefix and consumer names), starts workers of the
// running binary on it, writes changes with a per-entity sequence and a
// rolling checksum, injects faults (a worker killed with SIGKILL, the
// webhook endpoint down, the capture connection terminated, the dedup
// store cut off) and tallies what a webhook receiver of its own got:
// lost changes, duplicate effects, reordered first deliveries and how
// long the catch-up took. Everything it created is removed at the end.
//
// It is product code, not test code: internal/e2e holds the test
// suites' richer counterparts (Rig, Receiver, Proxy), which need a
// testing.TB.
package verify
