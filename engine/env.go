package engine

import (
	"time"

	"github.com/millrace/millrace/event"
)

// condEnv is what a condition evaluates over. A struct, unlike the view
// map, costs nothing to build: expr reads its fields by index.
type condEnv struct {
	ID         string         `expr:"id"`
	EventType  string         `expr:"event_type"`
	EntityType string         `expr:"entity_type"`
	EntityID   string         `expr:"entity_id"`
	Data       map[string]any `expr:"data"`
	// Changes is the event's own map: fetch reads it without a copy.
	Changes   map[string]event.Change `expr:"changes"`
	UserID    string                  `expr:"user_id"`
	TenantID  string                  `expr:"tenant_id"`
	Timestamp time.Time               `expr:"timestamp"`
	Seq       int64                   `expr:"seq"`
	Source    string                  `expr:"source"`

	ev *event.Event // for the field_changed functions
}

func (e *condEnv) fill(ev *event.Event) {
	*e = condEnv{
		ID: ev.ID, EventType: string(ev.Type), EntityType: ev.Entity, EntityID: ev.EntityID,
		Data: ev.Data, Changes: ev.Changes, UserID: ev.UserID, TenantID: ev.TenantID,
		Timestamp: ev.Timestamp, Seq: ev.Seq, Source: ev.Source, ev: ev,
	}
}
