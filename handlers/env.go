package handlers

import "github.com/millrace/millrace/event"

// View returns the event as the map that conditions and templates see:
// its JSON field names at the top (id, event_type, entity_type,
// entity_id, data, changes, user_id, tenant_id, timestamp, seq, source).
// changes is nil when the producer did not track changes.
func View(ev *event.Event) map[string]any {
	var changes map[string]any
	if ev.Changes != nil {
		changes = make(map[string]any, len(ev.Changes))
		for k, c := range ev.Changes {
			changes[k] = map[string]any{"old": c.Old, "new": c.New}
		}
	}
	return map[string]any{
		"id":          ev.ID,
		"event_type":  string(ev.Type),
		"entity_type": ev.Entity,
		"entity_id":   ev.EntityID,
		"data":        ev.Data,
		"changes":     changes,
		"user_id":     ev.UserID,
		"tenant_id":   ev.TenantID,
		"timestamp":   ev.Timestamp,
		"seq":         ev.Seq,
		"source":      ev.Source,
	}
}
