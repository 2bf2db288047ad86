// Package event defines the change-event envelope that travels on the bus,
// its JSON codec and its validation.
//
// The JSON field names are those of the FraiseQL EntityEvent, so producers
// and consumers written for it keep working.
package event
