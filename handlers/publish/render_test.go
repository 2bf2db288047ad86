package publish_test

import (
	"context"
	"testing"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers"
	"github.com/millrace/millrace/handlers/actiontest"
)

// Render shows the message Execute publishes: topic, id and payload.
func TestRenderIsWhatExecutePublishes(t *testing.T) {
	t.Parallel()
	var topic, id, payload string
	a := actiontest.Build(t, actiontest.Case{
		Registry: registry(t),
		Config:   config.Action{"type": "publish", "topic": "shipped", "body": `{"order": "{{ .entity_id }}"}`},
		Deps: handlers.Deps{Publish: func(_ context.Context, tp, i string, p []byte) error {
			topic, id, payload = tp, i, string(p)
			return nil
		}},
	})
	ev := &event.Event{ID: "00000000-0000-4000-8000-000000000001", Type: event.Insert, Entity: "Order", EntityID: "7"}
	e, err := a.(handlers.Renderer).Render(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Execute(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if e.Target != topic || e.Headers["Message-Id"] != id || e.Body != payload || payload != `{"order": "7"}` {
		t.Errorf("rendered %+v, published %s %s %s", e, topic, id, payload)
	}
}
