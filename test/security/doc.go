// Package security holds the end-to-end security tests: HTTP ingest
// refuses requests without the right credentials on every topology, and
// no secret the process is given (ingest and admin tokens, a webhook
// signing secret, a database password, an SMTP password) shows up in
// what it prints, logs, answers or stores. See docs/security.md.
package security
