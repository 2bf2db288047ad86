package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/millrace/millrace/event"
)

// Change is one row change a test made, as the delivered event must show
// it: data.n counts the updates of the row, so (op, entity, n) names the
// change.
type Change struct {
	Op       event.Type
	EntityID int
	Status   string
	N        int64
	// At is when the change was made (committed, or accepted by ingest).
	At time.Time
	// EventID is the event id when the test chose it (HTTP ingest).
	EventID string
}

// Key names the change: "UPDATE/12/3".
func (c Change) Key() string { return ChangeKey(c.Op, strconv.Itoa(c.EntityID), c.N) }

// ChangeKey names a change by its type, entity id and data.n.
func ChangeKey(op event.Type, entityID string, n int64) string {
	return string(op) + "/" + entityID + "/" + strconv.FormatInt(n, 10)
}

// DeliveryKey names the change a delivery carries; "" when its body is
// not an event with an integer data.n.
func DeliveryKey(d *Delivery) string {
	if d.Event == nil {
		return ""
	}
	n, ok := d.Event.Data["n"].(int64)
	if !ok {
		return ""
	}
	return ChangeKey(d.Event.Type, d.Event.EntityID, n)
}

// producer makes row changes: SQL on the watched tables when the rig
// captures, HTTP ingest otherwise, and remembers them.
type producer struct {
	r      *Rig
	client *http.Client

	mu       sync.Mutex
	produced []Change
	rows     map[int]row // the rows as ingest knows them
}

type row struct {
	status string
	n      int64
}

func newProducer(r *Rig) *producer {
	return &producer{r: r, client: &http.Client{Timeout: 15 * time.Second}, rows: map[int]row{}}
}

// Produced returns every change made so far.
func (r *Rig) Produced() []Change {
	p := r.prod
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Change(nil), p.produced...)
}

func (p *producer) record(cs []Change) {
	p.mu.Lock()
	p.produced = append(p.produced, cs...)
	p.mu.Unlock()
}

// bySource splits entity ids among the sources: id i goes to source
// i mod len(sources).
func (r *Rig) bySource(ids []int) [][]int {
	out := make([][]int, len(r.Sources))
	for _, id := range ids {
		i := id % len(r.Sources)
		out[i] = append(out[i], id)
	}
	return out
}

// Insert creates rows ids with status and n = 0.
func (r *Rig) Insert(ctx context.Context, ids []int, status string) error {
	return r.change(ctx, event.Insert, ids, status)
}

// Update sets status on rows ids and adds 1 to their n.
func (r *Rig) Update(ctx context.Context, ids []int, status string) error {
	return r.change(ctx, event.Update, ids, status)
}

// Delete deletes rows ids.
func (r *Rig) Delete(ctx context.Context, ids []int) error {
	return r.change(ctx, event.Delete, ids, "")
}

func (r *Rig) change(ctx context.Context, op event.Type, ids []int, status string) error {
	if len(ids) == 0 {
		return nil
	}
	if !r.Captures() {
		return r.prod.ingest(ctx, op, ids, status)
	}
	for i, part := range r.bySource(ids) {
		if len(part) == 0 {
			continue
		}
		if err := r.prod.sql(ctx, r.Sources[i], op, part, status); err != nil {
			return err
		}
	}
	return nil
}

func (p *producer) sql(ctx context.Context, src *Source, op event.Type, ids []int, status string) error {
	var q string
	args := []any{ids}
	switch op {
	case event.Insert:
		q = "INSERT INTO orders (id, status, n) SELECT x, $2, 0 FROM unnest($1::int[]) x RETURNING id, status, n"
		args = append(args, status)
	case event.Update:
		q = "UPDATE orders SET status = $2, n = n + 1 WHERE id = ANY($1) RETURNING id, status, n"
		args = append(args, status)
	case event.Delete:
		q = "DELETE FROM orders WHERE id = ANY($1) RETURNING id, status, n"
	}
	rows, err := src.Pool.Query(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("%s on %s: %w", op, src.Schema, err)
	}
	var cs []Change
	for rows.Next() {
		c := Change{Op: op}
		if err := rows.Scan(&c.EntityID, &c.Status, &c.N); err != nil {
			rows.Close()
			return err
		}
		cs = append(cs, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%s on %s: %w", op, src.Schema, err)
	}
	now := time.Now()
	for i := range cs {
		cs[i].At = now
	}
	p.record(cs)
	return nil
}

// ingest sends one event per id through POST /v1/events, as one batch,
// retrying until it is accepted: a change is made once ingest accepted
// it.
func (p *producer) ingest(ctx context.Context, op event.Type, ids []int, status string) error {
	now := time.Now().UTC()
	evs := make([]*event.Event, 0, len(ids))
	cs := make([]Change, 0, len(ids))
	p.mu.Lock()
	for _, id := range ids {
		old, exists := p.rows[id]
		ev := &event.Event{ID: uuid.NewString(), Type: op, Entity: "Order", EntityID: strconv.Itoa(id), Timestamp: now}
		c := Change{Op: op, EntityID: id, EventID: ev.ID}
		switch op {
		case event.Insert:
			c.Status = status
		case event.Update:
			if !exists {
				p.mu.Unlock()
				return fmt.Errorf("update of row %d, which was not inserted", id)
			}
			c.Status, c.N = status, old.n+1
			ev.Changes = map[string]event.Change{"n": {Old: old.n, New: c.N}}
			if status != old.status {
				ev.Changes["status"] = event.Change{Old: old.status, New: status}
			}
		case event.Delete:
			if !exists {
				p.mu.Unlock()
				return fmt.Errorf("delete of row %d, which was not inserted", id)
			}
			c.Status, c.N = old.status, old.n
		}
		ev.Data = map[string]any{"id": int64(id), "status": c.Status, "n": c.N}
		if op == event.Delete {
			delete(p.rows, id)
		} else {
			p.rows[id] = row{status: c.Status, n: c.N}
		}
		evs = append(evs, ev)
		cs = append(cs, c)
	}
	p.mu.Unlock()
	const batch = 500
	for start := 0; start < len(evs); start += batch {
		if err := p.r.IngestRetry(ctx, evs[start:min(start+batch, len(evs))]...); err != nil {
			return err
		}
	}
	at := time.Now()
	for i := range cs {
		cs[i].At = at
	}
	p.record(cs)
	return nil
}

// IngestRetry posts events to /v1/events until they are accepted (202),
// through restarts of the process: a refused connection, a broken one
// and a 5xx are retried with the same event ids; any other answer is an
// error.
func (r *Rig) IngestRetry(ctx context.Context, evs ...*event.Event) error {
	body, err := json.Marshal(evs)
	if err != nil {
		return err
	}
	for {
		status, answer, err := r.Post(ctx, "/v1/events", body)
		switch {
		case err == nil && status == http.StatusAccepted:
			return nil
		case err == nil && status < 500:
			return fmt.Errorf("ingest: %d %s", status, answer)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ingest: %w (last: %d %s %v)", ctx.Err(), status, answer, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Ingest posts events to /v1/events once and returns the status.
func (r *Rig) Ingest(ctx context.Context, evs ...*event.Event) (int, string, error) {
	body, err := json.Marshal(evs)
	if err != nil {
		return 0, "", err
	}
	return r.Post(ctx, "/v1/events", body)
}

// Post sends body to path on the process, with the rig's ingest token
// when it has one, and returns the status and the answer's body.
func (r *Rig) Post(ctx context.Context, path string, body []byte) (int, string, error) {
	h := http.Header{"Content-Type": {"application/json"}}
	if r.IngestToken != "" {
		h.Set("Authorization", "Bearer "+r.IngestToken)
	}
	return r.PostWith(ctx, path, body, h)
}

// PostWith sends body to path with header h (and nothing else) and
// returns the status and the answer's body.
func (r *Rig) PostWith(ctx context.Context, path string, body []byte, h http.Header) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.URL(path), bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header = h
	resp, err := r.prod.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil && !errors.Is(err, io.EOF) {
		return resp.StatusCode, string(b), err
	}
	return resp.StatusCode, string(b), nil
}
