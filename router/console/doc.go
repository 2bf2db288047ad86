// Package console is millrace's admin console: a web UI, served by the
// process itself under /console/ when http.console is true, over the
// same data as the admin API (dead letters) and /metrics (observers,
// breakers, the bus).
//
// The pages are rendered on the server with html/template; the only
// script is static/console.js, which refreshes the live parts of a page
// by fetching them again (?partial=1) every few seconds. Templates and
// assets are embedded, so the binary needs nothing else at run time and
// there is no front-end build. Every route except the login page and
// the static assets asks for the admin token: as a bearer header, or as
// the session cookie that the login form sets (see auth.go).
package console
