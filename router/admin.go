package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/millrace/millrace/stores"

	"github.com/millrace/millrace/bus"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/topologies"
)

// The admin API of the dead-letter store, under /v1/dlq. Every route
// needs "Authorization: Bearer <token>", the token being the value of the
// variable that http.admin_token_env names; without that key the routes
// do not exist (404).
//
//	GET    /v1/dlq?observer=&since=&limit=  list entries, oldest first, without payloads
//	GET    /v1/dlq/{id}                     one entry with its payload
//	GET    /v1/dlq?entity=&parked=true      the parked groups of an entity (on_failure = "park")
//	POST   /v1/dlq/replay                   {"ids": [...]} or {"all": true, "observer": ""}
//	                                        or {"entity": KEY, "observer": ""}: a parked group, in order; "dry_run"
//	POST   /v1/dlq/skip                     {"entity": KEY, "observer": ""}: drop a parked group's head, replay the rest
//	DELETE /v1/dlq/{id}                     drop one entry
//	DELETE /v1/dlq                          purge
//	GET    /v1/dlq/export?observer=&since=  the dead letters' events as JSON lines (record.go)
//	GET    /v1/record?since=&from_seq=&limit=  the events on the bus as JSON lines (record.go)
//	POST   /v1/try                          {"config", "against", "events"}: the try report (try.go)

// DeadLetterList is the body of GET /v1/dlq.
type DeadLetterList struct {
	// Entries are without their payload (PayloadBytes gives its size).
	Entries []stores.DeadLetter `json:"entries"`
	// Total is the number of entries in the store, whatever the filter.
	Total int `json:"total"`
	// Volatile is set when the topology's dead-letter store lives in the
	// process (its config.Features have no DurableDeadLetters): the
	// entries vanish when the process stops. Topology names it.
	Volatile bool   `json:"volatile,omitempty"`
	Topology string `json:"topology"`
}

// ReplayRequest is the body of POST /v1/dlq/replay: either IDs, or All
// with an optional Observer, or Entity with an optional Observer. It is
// the body of POST /v1/dlq/skip too, with Entity.
type ReplayRequest struct {
	IDs      []string `json:"ids,omitempty"`
	All      bool     `json:"all,omitempty"`
	Observer string   `json:"observer,omitempty"`
	// Entity names a parked entity, "source/entity_type/entity_id" as
	// stores.ParkKey writes it: the worker that runs the entity replays
	// its parked group (of Observer, or of every observer) in order,
	// after the request returned. The entries leave the store as they
	// succeed; the entity runs again once its group is empty.
	Entity string `json:"entity,omitempty"`
	// AllActions runs every action of the observer again; without it the
	// actions an entry records as succeeded are skipped.
	AllActions bool `json:"all_actions,omitempty"`
	// DryRun lists what would be replayed and changes nothing.
	DryRun bool `json:"dry_run,omitempty"`
}

// ReplayResponse is the answer of POST /v1/dlq/replay.
type ReplayResponse struct {
	DryRun bool `json:"dry_run,omitempty"`
	// Replayed counts the entries published again (or that would be);
	// for an entity, the entries of its parked groups, whose replay was
	// requested.
	Replayed int `json:"replayed"`
	// Groups counts the parked groups whose replay was requested.
	Groups int `json:"groups,omitempty"`
	// IDs are the entries replayed (or that would be).
	IDs []string `json:"ids"`
	// Failed are the entries that could not be replayed; they stay in
	// the store unless the error says they were published.
	Failed []ReplayFailure `json:"failed,omitempty"`
}

// ReplayFailure is an entry that could not be replayed.
type ReplayFailure struct {
	ID    string `json:"id"`
	Error string `json:"error"`
}

// PurgeResponse is the answer of DELETE /v1/dlq.
type PurgeResponse struct {
	Purged int `json:"purged"`
}

// parkedEntryError starts the failure of a replay by id that names an
// entry of a parked group: those replay with their group, by entity.
const parkedEntryError = "entry of a parked group"

// replayPage is how many entries a replay of "all" reads at once.
const replayPage = 500

// dlqMetrics are the dead-letter metrics of one router.
type dlqMetrics struct {
	written  prometheus.Counter
	replayed prometheus.Counter
}

// dlqMetrics registers the dead-letter metrics on the router's registry
// the first time and returns them; later calls find them there, so the
// router needs no field for them.
func (r *Router) dlqMetrics() dlqMetrics {
	reg := r.metrics.Registry
	m := dlqMetrics{
		written: registerOnce(reg, r.logger, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "millrace_dlq_written_total", Help: "Entries written to the dead-letter store."})),
		replayed: registerOnce(reg, r.logger, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "millrace_dlq_replayed_total", Help: "Dead-letter entries published again by a replay."})),
	}
	registerOnce(reg, r.logger, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "millrace_dlq_size", Help: "Entries in the dead-letter store (NaN when the store cannot be reached).",
	}, r.dlqSize))
	return m
}

func registerOnce[C prometheus.Collector](reg prometheus.Registerer, logger *slog.Logger, c C) C {
	err := reg.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	logger.Warn("metric not registered", "err", err)
	return c
}

// dlqSize is the gauge's value: the store's Count, which every store
// answers from its own bookkeeping (stream state, XLEN, count(*)).
func (r *Router) dlqSize() float64 {
	store := r.deadLetterStore()
	if store == nil {
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, err := store.Count(ctx)
	if err != nil {
		return math.NaN()
	}
	return float64(n)
}

func (r *Router) deadLetterStore() stores.DeadLetters {
	b, _ := r.builtBackend()
	if b == nil {
		return nil
	}
	return b.DeadLetters
}

// countDeadLetters wraps b's dead-letter store so that every entry
// written through it counts in millrace_dlq_written_total. Run calls it
// once, right after building the backend.
func (r *Router) countDeadLetters(b *topologies.Backend) {
	if b.DeadLetters == nil {
		return
	}
	if _, done := b.DeadLetters.(*stores.CountingDeadLetters); done {
		return
	}
	b.DeadLetters = stores.NewCountingDeadLetters(b.DeadLetters, r.dlqMetrics().written)
}

// mountAdmin adds the dead-letter and record routes to mux when an admin token is
// configured, and the dead-letter metrics in any case.
func (r *Router) mountAdmin(mux *http.ServeMux) {
	r.dlqMetrics()
	envName := r.cfg.HTTP.AdminTokenEnv
	if envName == "" {
		return
	}
	token := os.Getenv(envName)
	if token == "" {
		r.logger.Warn("admin endpoints refuse every request: the token variable is empty", "http.admin_token_env", envName)
	}
	auth := func(h http.HandlerFunc) http.Handler { return requireBearer(token, "millrace admin", h) }
	mux.Handle("GET /v1/dlq", auth(r.dlqList))
	mux.Handle("GET /v1/dlq/{id}", auth(r.dlqShow))
	mux.Handle("POST /v1/dlq/replay", auth(r.dlqReplay))
	mux.Handle("POST /v1/dlq/skip", auth(r.dlqSkip))
	mux.Handle("DELETE /v1/dlq/{id}", auth(r.dlqDelete))
	mux.Handle("DELETE /v1/dlq", auth(r.dlqPurge))
	mux.Handle("GET /v1/dlq/export", auth(r.dlqExport))
	mux.Handle("GET /v1/record", auth(r.record))
	mux.Handle("POST /v1/try", auth(r.tryConfigs))
	if r.cfg.HTTP.Console {
		r.mountConsole(mux, token)
	}
}

func errorBody(msg string) map[string]string { return map[string]string{"error": msg} }

// store answers 503 when the router has not built its backend yet and 501
// when the topology keeps no dead letters.
func (r *Router) store(w http.ResponseWriter) stores.DeadLetters {
	b, why := r.builtBackend()
	if b == nil {
		writeJSON(w, http.StatusServiceUnavailable, errorBody("starting: "+why))
		return nil
	}
	if b.DeadLetters == nil {
		writeJSON(w, http.StatusNotImplemented, errorBody("topology "+r.cfg.Topology+" has no dead-letter store"))
		return nil
	}
	return b.DeadLetters
}

// parseSince accepts an RFC 3339 time or a duration back from now ("1h").
func parseSince(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return time.Now().Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("since %q: want an RFC 3339 time or a duration such as 1h", s)
}

// deadLetterFilter reads the observer and since parameters that the
// list and the export of dead letters share.
func deadLetterFilter(q url.Values) (stores.DeadLetterFilter, error) {
	since, err := parseSince(q.Get("since"))
	return stores.DeadLetterFilter{Observer: q.Get("observer"), Since: since}, err
}

func (r *Router) dlqList(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	f, err := deadLetterFilter(q)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody(err.Error()))
		return
	}
	f.Key, f.Parked = q.Get("entity"), q.Get("parked") == "true"
	if s := q.Get("limit"); s != "" {
		if f.Limit, err = strconv.Atoi(s); err != nil || f.Limit < 1 {
			writeJSON(w, http.StatusBadRequest, errorBody(fmt.Sprintf("limit %q: want a positive integer", s)))
			return
		}
	}
	store := r.store(w)
	if store == nil {
		return
	}
	dls, err := store.List(req.Context(), f)
	if err != nil {
		r.storeError(w, req, "list", err)
		return
	}
	total, err := store.Count(req.Context())
	if err != nil {
		r.storeError(w, req, "count", err)
		return
	}
	for i := range dls {
		dls[i].PayloadBytes, dls[i].Payload = len(dls[i].Payload), nil
	}
	out := DeadLetterList{Entries: dls, Total: total, Topology: r.cfg.Topology,
		Volatile: !r.opts.Topologies.Features(r.cfg.Topology).DurableDeadLetters}
	writeJSON(w, http.StatusOK, out)
}

func (r *Router) dlqShow(w http.ResponseWriter, req *http.Request) {
	store := r.store(w)
	if store == nil {
		return
	}
	dl, err := store.Get(req.Context(), req.PathValue("id"))
	if err != nil {
		r.storeError(w, req, "get", err)
		return
	}
	writeJSON(w, http.StatusOK, dl)
}

func (r *Router) dlqDelete(w http.ResponseWriter, req *http.Request) {
	store := r.store(w)
	if store == nil {
		return
	}
	id := req.PathValue("id")
	if _, err := store.Get(req.Context(), id); err != nil {
		r.storeError(w, req, "get", err)
		return
	}
	if err := store.Delete(req.Context(), id); err != nil {
		r.storeError(w, req, "delete", err)
		return
	}
	r.logger.InfoContext(req.Context(), "dead letter deleted", "id", id)
	w.WriteHeader(http.StatusNoContent)
}

func (r *Router) dlqPurge(w http.ResponseWriter, req *http.Request) {
	store := r.store(w)
	if store == nil {
		return
	}
	n, err := store.Purge(req.Context())
	if err != nil {
		r.storeError(w, req, "purge", err)
		return
	}
	r.logger.InfoContext(req.Context(), "dead letters purged", "count", n)
	writeJSON(w, http.StatusOK, PurgeResponse{Purged: n})
}

func (r *Router) storeError(w http.ResponseWriter, req *http.Request, op string, err error) {
	if errors.Is(err, stores.ErrNotFound) {
		writeJSON(w, http.StatusNotFound, errorBody(err.Error()))
		return
	}
	r.logger.ErrorContext(req.Context(), "dead-letter store failed", "op", op, "err", err)
	writeJSON(w, http.StatusBadGateway, errorBody(op+": "+err.Error()))
}

// dlqReplay publishes entries again and deletes each once it is on the
// bus. The answer is 200 when every entry was replayed, 404 when none of
// the failures is more than an unknown id, 409 when the worst is an
// entry of a parked group, 500 otherwise; the body says which entries
// failed in every case.
func (r *Router) dlqReplay(w http.ResponseWriter, req *http.Request) {
	rr, ok := decodeReplayRequest(w, req)
	if !ok {
		return
	}
	switch {
	case rr.Entity != "" && (rr.All || len(rr.IDs) > 0):
		writeJSON(w, http.StatusBadRequest, errorBody(`give "entity" alone or with "observer", not with "ids" or "all"`))
		return
	case rr.Entity != "":
		r.releaseEntity(w, req, rr, false)
		return
	case rr.All && len(rr.IDs) > 0:
		writeJSON(w, http.StatusBadRequest, errorBody(`give either "ids" or "all", not both`))
		return
	case !rr.All && len(rr.IDs) == 0:
		writeJSON(w, http.StatusBadRequest, errorBody(`give "ids" or "all": true`))
		return
	case !rr.All && rr.Observer != "":
		writeJSON(w, http.StatusBadRequest, errorBody(`"observer" goes with "all"`))
		return
	}
	store := r.store(w)
	if store == nil {
		return
	}
	res, err := r.replay(req.Context(), store, rr)
	if err != nil {
		r.storeError(w, req, "replay", err)
		return
	}
	r.logger.InfoContext(req.Context(), "dead letters replayed", "replayed", res.Replayed, "failed", len(res.Failed), "dry_run", rr.DryRun)
	// The worst failure decides: one that is no client error (500), an
	// entry of a parked group (409), an unknown id (404).
	status := http.StatusOK
	for _, f := range res.Failed {
		switch {
		case strings.HasPrefix(f.Error, parkedEntryError):
			status = max(status, http.StatusConflict)
		case strings.Contains(f.Error, stores.ErrNotFound.Error()):
			status = max(status, http.StatusNotFound)
		default:
			status = http.StatusInternalServerError
		}
	}
	writeJSON(w, status, res)
}

// decodeReplayRequest reads a replay or skip body strictly; on an error
// it answers 400 and ok is false.
func decodeReplayRequest(w http.ResponseWriter, req *http.Request) (rr ReplayRequest, ok bool) {
	dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rr); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody("body: "+err.Error()))
		return rr, false
	}
	return rr, true
}

// dlqSkip takes the head out of an entity's parked groups (it stays in
// the store as an ordinary dead letter) and replays the rest in order.
func (r *Router) dlqSkip(w http.ResponseWriter, req *http.Request) {
	rr, ok := decodeReplayRequest(w, req)
	if !ok {
		return
	}
	if rr.Entity == "" || rr.All || len(rr.IDs) > 0 || rr.AllActions {
		writeJSON(w, http.StatusBadRequest, errorBody(`give "entity", and optionally "observer" and "dry_run"`))
		return
	}
	r.releaseEntity(w, req, rr, true)
}

// releaseEntity answers a replay or skip of an entity's parked groups:
// 202 once their release messages are on the bus, 404 when the entity
// has no parked group, 500 when a release could not be published.
func (r *Router) releaseEntity(w http.ResponseWriter, req *http.Request, rr ReplayRequest, skip bool) {
	if rr.AllActions {
		writeJSON(w, http.StatusBadRequest, errorBody(`"all_actions" does not go with "entity"`))
		return
	}
	store := r.store(w)
	if store == nil {
		return
	}
	res, err := r.requestRelease(req.Context(), store, rr.Entity, rr.Observer, skip, rr.DryRun)
	if err != nil {
		r.storeError(w, req, "replay", err)
		return
	}
	r.logger.InfoContext(req.Context(), "parked groups released", "entity", rr.Entity, "observer", rr.Observer,
		"skip", skip, "groups", res.Groups, "entries", res.Replayed, "dry_run", rr.DryRun)
	status := http.StatusAccepted
	switch {
	case len(res.Failed) > 0:
		status = http.StatusInternalServerError
	case res.Groups == 0:
		status = http.StatusNotFound
		res.Failed = append(res.Failed, ReplayFailure{Error: fmt.Sprintf("entity %q has no parked group", rr.Entity)})
	}
	writeJSON(w, status, res)
}

// replay replays the requested entries. For "all" it replays what the
// store held when the call began: entries that fail again during the
// replay come back with a later LastFailure and are left for the next
// one, so a replay always ends.
func (r *Router) replay(ctx context.Context, store stores.DeadLetters, rr ReplayRequest) (ReplayResponse, error) {
	res := ReplayResponse{DryRun: rr.DryRun, IDs: []string{}}
	replayed := r.dlqMetrics().replayed
	do := func(dl stores.DeadLetter) {
		if rr.DryRun {
			res.Replayed++
			res.IDs = append(res.IDs, dl.ID)
			return
		}
		published, err := r.replayOne(ctx, store, dl, rr.AllActions)
		if published {
			res.Replayed++
			res.IDs = append(res.IDs, dl.ID)
			replayed.Inc()
		}
		if err != nil {
			res.Failed = append(res.Failed, ReplayFailure{ID: dl.ID, Error: err.Error()})
		}
	}
	if !rr.All {
		for _, id := range rr.IDs {
			dl, err := store.Get(ctx, id)
			if err != nil {
				if !errors.Is(err, stores.ErrNotFound) {
					return res, err
				}
				res.Failed = append(res.Failed, ReplayFailure{ID: id, Error: err.Error()})
				continue
			}
			if dl.Parked {
				res.Failed = append(res.Failed, ReplayFailure{ID: id,
					Error: fmt.Sprintf("%s: replay it with its group (entity %q)", parkedEntryError, dl.Key)})
				continue
			}
			do(dl)
		}
		return res, nil
	}
	start := time.Now()
	seen := map[string]bool{}
	kept := 0 // seen entries that are still in the store, ahead of the rest
	for {
		limit := kept + replayPage
		if rr.DryRun {
			n, err := store.Count(ctx)
			if err != nil {
				return res, err
			}
			limit = max(n, 1)
		}
		page, err := store.List(ctx, stores.DeadLetterFilter{Observer: rr.Observer, Limit: limit})
		if err != nil {
			return res, err
		}
		progress := false
		for _, dl := range page {
			if seen[dl.ID] {
				continue
			}
			seen[dl.ID], progress = true, true
			// Parked groups are replayed by entity, in order.
			if dl.LastFailure.After(start) || dl.Parked {
				kept++
				continue
			}
			failed := len(res.Failed)
			do(dl)
			if rr.DryRun || len(res.Failed) > failed {
				kept++
			}
		}
		if !progress || rr.DryRun || len(page) < limit {
			return res, nil
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
	}
}

// replayOne publishes an entry's payload on its topic as a new message
// (a new UUID: JetStream would drop a reused Nats-Msg-Id inside its
// duplicate window), restricted to the observer that failed, with the
// event's ordering key and, unless allActions, the keys of the actions
// the entry records as succeeded, which are then skipped however long
// after the failure the replay comes; then it deletes the entry. Dedup
// and the result cache apply as to any delivery: the observer's dedup
// key was released when it failed.
func (r *Router) replayOne(ctx context.Context, store stores.DeadLetters, dl stores.DeadLetter, allActions bool) (published bool, err error) {
	m := message.NewMessageWithContext(ctx, watermill.NewUUID(), dl.Payload)
	if dl.Observer != "" {
		m.Metadata.Set(bus.ObserverMetadata, dl.Observer)
		if allActions {
			m.Metadata.Set(bus.AllActionsMetadata, "true")
		} else if len(dl.Succeeded) > 0 {
			keys := make([]string, len(dl.Succeeded))
			for i, a := range dl.Succeeded {
				keys[i] = a.Key
			}
			m.Metadata.Set(bus.SucceededMetadata, strings.Join(keys, ","))
		}
	}
	// An undecodable payload is replayed as it is, and will most likely
	// be dead-lettered again. It still needs a subject under the topic:
	// the consumer reads "<topic>.>" only.
	if ev, err := event.Decode(dl.Payload); err == nil {
		bus.SetRouting(m, ev)
	} else {
		m.Metadata.Set(bus.SubjectMetadata, bus.Subject("", "", ""))
	}
	topic := dl.Topic
	if topic == "" {
		topic = r.cfg.Router.Topic
	}
	if err := r.backend.Publisher.Publish(topic, m); err != nil {
		return false, fmt.Errorf("publish: %w", err)
	}
	if err := store.Delete(ctx, dl.ID); err != nil {
		return true, fmt.Errorf("published, but not deleted (a later replay would be a duplicate): %w", err)
	}
	return true, nil
}
