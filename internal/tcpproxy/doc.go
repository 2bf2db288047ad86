// Package tcpproxy forwards TCP connections from a loopback port to a
// service, and can stop and resume on the same port, so that the service
// appears to die and come back without touching it: `millrace verify`
// cuts the dedup store off with it, and the end-to-end tests make a
// service appear late or vanish.
package tcpproxy
