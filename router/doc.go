// Package router builds and runs millrace's one Watermill router from the
// config: the topology's bus, the observer handler with its middleware,
// and the HTTP server for ingest, health, metrics and admin.
package router
