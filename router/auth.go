package router

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/handlers/webhook"
)

// IngestTokenMetadata holds, on every message that HTTP ingest
// publishes, the name of the ingest token that let it in.
const IngestTokenMetadata = "millrace_ingest_token"

// Labels of the ingest metrics for requests without a known producer.
const (
	// anonymousProducer: ingest has no credentials (loopback only).
	anonymousProducer = "anonymous"
	// unknownProducer: the request's credentials matched no token.
	unknownProducer = "unknown"
)

// secretHash is what bearer tokens are compared as: hashes have a fixed
// length, so a constant-time comparison does not leak a token's length.
type secretHash [sha256.Size]byte

func hashSecret(s string) secretHash { return sha256.Sum256([]byte(s)) }

// matches compares in constant time.
func (h secretHash) matches(presented string) bool {
	got := hashSecret(presented)
	return subtle.ConstantTimeCompare(got[:], h[:]) == 1
}

// bearerToken returns the token of an "Authorization: Bearer" header.
func bearerToken(req *http.Request) (string, bool) {
	return strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
}

// requireBearer wraps h so that it answers 401 unless the request
// carries token; an empty token refuses every request.
func requireBearer(token, realm string, h http.Handler) http.Handler {
	want := hashSecret(token)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		got, ok := bearerToken(req)
		if !ok || token == "" || !want.matches(got) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`"`)
			writeJSON(w, http.StatusUnauthorized, errorBody("missing or wrong bearer token"))
			return
		}
		h.ServeHTTP(w, req)
	})
}

// producer is one [[http.ingest_tokens]] entry, ready to check requests.
type producer struct {
	name    string
	token   secretHash // bearer producers
	bearer  bool
	key     []byte // signing producers: the HMAC key
	limiter *rate.Limiter
	perReq  time.Duration // 1/rate, for Retry-After
	cfg     config.IngestToken
}

// ingestAuth checks the credentials of POST /v1/events against the
// configured producers. With none configured every request is let in,
// as the anonymous producer (config validation allows that only on a
// loopback address).
type ingestAuth struct {
	producers []*producer
}

// newIngestAuth reads the producers' secrets through lookup.
func newIngestAuth(cfg config.HTTP, lookup func(string) (string, bool)) (*ingestAuth, error) {
	a := &ingestAuth{}
	for i, t := range cfg.IngestTokens {
		path := config.Index("http.ingest_tokens", i)
		p := &producer{name: t.Name, cfg: t}
		switch {
		case t.TokenEnv != "":
			v, _ := lookup(t.TokenEnv)
			if v == "" {
				return nil, config.Errorf(path+".token_env", "environment variable %s is not set", t.TokenEnv)
			}
			p.token, p.bearer = hashSecret(v), true
		default:
			v, _ := lookup(t.SecretEnv)
			key, err := webhook.DecodeSecret(v)
			if err != nil {
				return nil, config.Errorf(path+".secret_env", "environment variable %s: %v", t.SecretEnv, err)
			}
			p.key = key
		}
		if t.Rate != "" {
			perSec, err := config.ParseRate(t.Rate)
			if err != nil {
				return nil, config.Errorf(path+".rate", "%v", err)
			}
			burst := t.Burst
			if burst == 0 {
				burst = max(1, int(math.Ceil(perSec)))
			}
			p.limiter = rate.NewLimiter(rate.Limit(perSec), burst)
			p.perReq = time.Duration(float64(time.Second) / perSec)
		}
		a.producers = append(a.producers, p)
	}
	return a, nil
}

// open reports whether ingest takes requests without credentials.
func (a *ingestAuth) open() bool { return len(a.producers) == 0 }

// hasBearer reports whether the request presents a bearer token, which
// is checked before the body is read.
func hasBearer(req *http.Request) bool {
	_, ok := bearerToken(req)
	return ok
}

// byBearer finds the producer whose token the request carries. Every
// token is compared, so the time taken does not tell which one nearly
// matched.
func (a *ingestAuth) byBearer(req *http.Request) (*producer, error) {
	got, _ := bearerToken(req)
	var found *producer
	for _, p := range a.producers {
		if p.bearer && p.token.matches(got) {
			found = p
		}
	}
	if found == nil {
		return nil, fmt.Errorf("wrong bearer token")
	}
	return found, nil
}

// bySignature finds the producer whose signing secret signed the body.
func (a *ingestAuth) bySignature(req *http.Request, body []byte) (*producer, error) {
	if req.Header.Get("Webhook-Signature") == "" {
		return nil, fmt.Errorf("missing credentials: send \"Authorization: Bearer <token>\" or a Standard Webhooks signature (webhook-id, webhook-timestamp, webhook-signature)")
	}
	now := time.Now()
	var last error
	for _, p := range a.producers {
		if p.key == nil {
			continue
		}
		err := webhook.Verify(p.key, req.Header, body, now, webhook.DefaultTolerance)
		if err == nil {
			return p, nil
		}
		last = err
	}
	if last == nil {
		return nil, fmt.Errorf("signed requests are not configured: no ingest token has secret_env")
	}
	return nil, fmt.Errorf("signature: %w", last)
}

// allow takes one request from the producer's rate; when it is over,
// it returns how long to wait.
func (p *producer) allow() (bool, time.Duration) {
	if p.limiter == nil || p.limiter.Allow() {
		return true, 0
	}
	return false, p.perReq
}

// admit checks an event against what the producer may send, and gives
// it the producer's source when it names none.
func (p *producer) admit(ev *event.Event) error {
	c := p.cfg
	if len(c.EntityTypes) > 0 && !slices.Contains(c.EntityTypes, ev.Entity) {
		return fmt.Errorf("ingest token %q may not send entity type %q (allowed: %s)", p.name, ev.Entity, strings.Join(c.EntityTypes, ", "))
	}
	if len(c.EventTypes) > 0 && !slices.Contains(c.EventTypes, string(ev.Type)) {
		return fmt.Errorf("ingest token %q may not send event type %s (allowed: %s)", p.name, ev.Type, strings.Join(c.EventTypes, ", "))
	}
	if c.Source != "" {
		switch ev.Source {
		case "":
			ev.Source = c.Source
		case c.Source:
		default:
			return fmt.Errorf("ingest token %q may not send source %q (allowed: %s)", p.name, ev.Source, c.Source)
		}
	}
	return nil
}
