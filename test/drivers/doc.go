// Package drivers holds the end-to-end tests of the upstream Watermill
// bus drivers (bus.driver = "watermill", docs/drivers.md): events
// published through a router on watermill-nats/v2 and
// watermill-redisstream reach the observers once, with dedup and the
// result cache on, and the differences from millrace's own buses are
// checked as documented.
package drivers
