// Package badinput holds the bad-input tests: malformed, oversized,
// wrong-typed and unknown-type events through HTTP ingest (refused with a
// 4xx and a reason) and straight onto each topology's bus (dead-lettered
// with a reason while the router keeps running). See docs/testing.md.
package badinput
