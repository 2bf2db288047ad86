// Package cacheinvalidate is the "cache_invalidate" action: it deletes
// Redis keys named by templates over the event, on the shared client of
// the [redis] section; without that section the config is refused at
// validate time (Config.CheckConfig).
//
// A key whose template text (outside {{ }}) holds a glob character (*, ?
// or [) is a pattern: the matching keys are found with SCAN and deleted
// with UNLINK, in batches. Any other key is deleted with UNLINK as it
// renders. Inside a pattern, every value the template takes from the
// event is escaped first, so an event cannot widen the pattern: an
// entity_id of "*" matches only a literal "*".
package cacheinvalidate
