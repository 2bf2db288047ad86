package router

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
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
// are read from this process's environment, as for `millrace try`, but
// only names the running config's actions, [databases] and [smtp] use
// (tryEnv): the endpoint must not read the server's other variables (its
// tokens, the sources' URLs) for whoever holds the admin token.
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
		if err == nil {
			err = r.tryEnv(cfg)
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

// tryEnv refuses every *_env key of a posted config whose variable the
// running config does not name for its actions, [databases] or [smtp].
func (r *Router) tryEnv(cfg *config.Config) error {
	allowed := map[string]bool{}
	for path, name := range r.cfg.EnvRefs() {
		if strings.HasPrefix(path, "observers.") || strings.HasPrefix(path, "databases.") || strings.HasPrefix(path, "smtp.") {
			allowed[name] = true
		}
	}
	refs := cfg.EnvRefs()
	paths := make([]string, 0, len(refs))
	for p := range refs {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var errs []error
	for _, p := range paths {
		if !allowed[refs[p]] {
			errs = append(errs, config.Errorf(p, "environment variable %s: POST /v1/try reads only the variables the running config's actions, [databases] and [smtp] name; run `millrace try` where the variable is set", refs[p]))
		}
	}
	return errors.Join(errs...)
}
