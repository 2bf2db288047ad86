// Package config holds millrace's typed configuration: the one struct that a
// TOML file and MILLRACE_ environment variables decode into, its defaults
// and its validation.
//
// Decoding is strict: an unknown key is an error that names its path and
// suggests the nearest valid key, a value of the wrong type or a bad
// duration is an error naming its path, and every problem of a file is
// reported at once. The same decoder serves the action configs that
// handler types declare (see Decode).
package config
