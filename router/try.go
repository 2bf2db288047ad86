package router

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/try"
)

// POST /v1/try is `millrace try` over HTTP, for the admin console: a
// config (and one to compare with) and events in, the try report out.
// It needs the admin token, as the /v1/dlq routes do (admin.go).

// TryRequest is the body of POST /v1/try.
type TryRequest struct {
	// Config is the TOML text of the config to try.
	Config string `json:"config"`
	// Against, when set, is the TOML text of the config to compare
	// with, usually the one running now.
	Against string `json:"against,omitempty"`
	// Events holds one event envelope per line, as `millrace try` reads
	// a file; a line that is not an envelope is reported and skipped.
	Events string `json:"events"`
}

// maxTryBody bounds the body of POST /v1/try: two configs and a file of
// events, larger than one ingest batch (http.max_body_bytes) may be.
const maxTryBody = 32 << 20

// tryConfigs answers POST /v1/try: 200 with the report (its regressions
// count says whether the new config errors where the old one did not,
// the exit 1 of the command line); 400 when a config does not validate
// or its actions cannot be built, with every problem and its key path,
// prefixed with the request field ("config" or "against"). The configs
// are taken as posted, without MILLRACE_ overrides; their *_env names
// are read from this process's environment, as for `millrace try`.
// Nothing is sent: the actions only render their effects.
func (r *Router) tryConfigs(w http.ResponseWriter, req *http.Request) {
	var tr TryRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, maxTryBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&tr); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeJSON(w, http.StatusRequestEntityTooLarge, errorBody(fmt.Sprintf("body larger than %d bytes", maxTryBody)))
			return
		}
		writeJSON(w, http.StatusBadRequest, errorBody("body: "+err.Error()))
		return
	}
	if strings.TrimSpace(tr.Config) == "" {
		writeJSON(w, http.StatusBadRequest, errorBody(`"config": the TOML of the config to try is required`))
		return
	}
	ctx := req.Context()
	build := func(field, text string) (*try.Set, error) {
		cfg, err := config.Parse([]byte(text), nil)
		if err == nil {
			err = Check(cfg, r.opts.Actions, r.opts.Topologies)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		s, err := try.Build(ctx, cfg, r.opts.Actions)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		return s, nil
	}
	next, err := build("config", tr.Config)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody(err.Error()))
		return
	}
	defer next.Close()
	var old *try.Set
	if tr.Against != "" {
		if old, err = build("against", tr.Against); err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody(err.Error()))
			return
		}
		defer old.Close()
	}
	rep, err := try.Compare(ctx, old, next, strings.NewReader(tr.Events))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody("events: "+err.Error()))
		return
	}
	r.logger.InfoContext(ctx, "configs tried", "events", rep.Events, "malformed", len(rep.Malformed), "regressions", rep.Regressions)
	writeJSON(w, http.StatusOK, rep)
}
