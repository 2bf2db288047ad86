// Package procfs reads what Linux's /proc says of processes' TCP
// sockets: the local ports of a process's connections to a server
// (LocalPorts), by which a test or the bench finds that process's
// backends in PostgreSQL's pg_stat_activity, and the process listening
// on a port (ListenerPID), a local service's server whose CPU time the
// bench reads. Elsewhere than on Linux its functions fail.
package procfs
