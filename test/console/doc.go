// Package console tests the admin console in a real browser: headless
// Chromium, driven with chromedp, against a millrace process on the
// nats topology with the test's PostgreSQL, Redis and NATS. Chromium is
// Debian's "chromium" package, which test/services.sh installs; without
// it the test fails and says so.
//
// Each page's screenshot goes to the test's artifact directory (go test
// -artifacts keeps them) and, with MILLRACE_UPDATE_SCREENSHOTS=1, to
// docs/console/ as well, where the README shows them.
package console
