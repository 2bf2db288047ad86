// Package config holds millrace's typed configuration: the one struct that a
// TOML file and MILLRACE_ environment variables decode into, its defaults
// and its validation.
//
// Decoding is strict: an unknown key is an error that names its path and
// suggests the nearest valid key, a value of the wrong type or a bad
// duration is an error naming its path, and every problem of a file is
// reported at once. The same decoder serves the action configs that
// handler types declare (see Decode).
//
// Config.Validate checks what does not depend on the topology. The
// topology key, and the sections only some topologies use ([embedded],
// [nats], [redis], [postgres] as a bus), are checked by the topology that
// the registry holds under that name (topologies.Registry), and what an
// action needs of other sections by the action (handlers.ConfigChecker);
// router.Check runs all of it. CheckName, CheckSchema and CheckPositive
// give those checks the same messages as this package's. Features is
// what a topology declares it provides, for the actions to check.
package config
