// Package cacheinvalidate is the "cache_invalidate" action: it deletes
// Redis keys named by templates over the event, on the shared client of
// the [redis] section.
//
// A key whose template text holds a glob character (*, ? or [) is a
// pattern: the matching keys are found with SCAN and deleted with UNLINK,
// in batches. Any other key is deleted with UNLINK as it renders. Values
// that the template inserts from the event are escaped inside patterns,
// so an event cannot widen a pattern: an entity_id of "*" matches only a
// literal "*".
package cacheinvalidate
