package console

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// The browser login: the form at /console/login takes the admin token
// and, when it is right, starts a session whose random id goes in a
// cookie (HttpOnly: no script reads it; SameSite=Strict: no other site's
// page sends it, which with the Origin check of POSTs stops cross-site
// requests; Path=/console/: the JSON API never sees it). The token
// itself is never stored in the browser, so that a stolen cookie dies
// with its session (logout, sessionTTL, a restart), while the token
// stays valid for the API and the CLI.
const (
	cookieName  = "millrace_console"
	sessionTTL  = 12 * time.Hour
	maxSessions = 1000
)

// sessions are the logged-in browsers, by the hash of their cookie: the
// map holds no value a memory dump could replay.
type sessions struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]time.Time // expiry
}

func newSessions() *sessions { return &sessions{m: map[[sha256.Size]byte]time.Time{}} }

// start returns a new session's cookie value.
func (s *sessions) start() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	id := hex.EncodeToString(b[:])
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= maxSessions {
		for k, exp := range s.m {
			if now.After(exp) {
				delete(s.m, k)
			}
		}
		if len(s.m) >= maxSessions {
			// Drop the oldest one rather than refuse a login.
			var oldest [sha256.Size]byte
			first := true
			for k, exp := range s.m {
				if first || exp.Before(s.m[oldest]) {
					oldest, first = k, false
				}
			}
			delete(s.m, oldest)
		}
	}
	s.m[sha256.Sum256([]byte(id))] = now.Add(sessionTTL)
	return id
}

// valid reports whether id is a live session.
func (s *sessions) valid(id string) bool {
	if id == "" {
		return false
	}
	k := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.m[k]
	if ok && time.Now().After(exp) {
		delete(s.m, k)
		return false
	}
	return ok
}

func (s *sessions) end(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, sha256.Sum256([]byte(id)))
}

// authenticated reports whether req carries the admin token (bearer
// header, for scripts and tests) or a live session cookie.
func (c *Console) authenticated(req *http.Request) bool {
	if tok, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer "); ok {
		return c.checkToken(tok)
	}
	ck, err := req.Cookie(cookieName)
	return err == nil && c.sessions.valid(ck.Value)
}

// sameOrigin refuses a state-changing request sent from another site's
// page. Browsers send Sec-Fetch-Site on every request, and it is what
// decides; older ones send Origin on a POST (with Referrer-Policy
// no-referrer it would be "null", hence same-origin below). A request
// with neither (curl with a bearer token) is not a browser's and has no
// ambient credentials to abuse.
func sameOrigin(req *http.Request) bool {
	if site := req.Header.Get("Sec-Fetch-Site"); site != "" {
		return site == "same-origin" || site == "none"
	}
	origin := req.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host == req.Host
}

func (c *Console) setSessionCookie(w http.ResponseWriter, req *http.Request, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: value, Path: Prefix, MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: req.TLS != nil})
}
