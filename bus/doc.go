// Package bus is the message contract every millrace bus keeps, whatever
// carries it (JetStream, a Redis stream, the PostgreSQL change log): the
// metadata keys a message may carry, how an event's subject and ordering
// key are built from it, and the key that places a message in a
// partition. Publishers (capture, HTTP ingest, the publish action,
// dead-letter replay) set them with SetRouting; buses read them.
package bus
