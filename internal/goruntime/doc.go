// Package goruntime applies the [runtime] section of a config to the Go
// runtime of the process: the garbage collector's target (GOGC) and the
// soft memory limit (GOMEMLIMIT). `millrace run` applies it at start,
// and the bench before each topology's runs, so that the bench measures
// the process users run.
package goruntime
