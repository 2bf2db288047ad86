// Package webhook is the "webhook" action: it sends one HTTP request per
// event, signed per the Standard Webhooks specification, and classifies the
// answer as success, transient or permanent failure for the router's retry
// and failure policies.
//
// It also holds what other HTTP-based actions reuse: Guard, the SSRF guard
// that refuses private and reserved destinations after DNS resolution, at
// dial time; NewClient, a pooled client behind that guard; and Do, which
// sends a request and turns the answer into a classified error.
package webhook
