package console

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Prefix is where the console is mounted.
const Prefix = "/console/"

// csp allows only the console's own script and stylesheet: no inline
// script or style, no other origin, no framing.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

//go:embed templates static
var assets embed.FS

// Options configure a Console.
type Options struct {
	Source Source
	// CheckToken compares a presented admin token with the configured
	// one, in constant time.
	CheckToken func(string) bool
	Logger     *slog.Logger
}

// Console serves the console's routes.
type Console struct {
	src        Source
	checkToken func(string) bool
	logger     *slog.Logger
	sessions   *sessions
	pages      map[string]*template.Template
}

// pageNames are the templates/<name>.html files, each rendered inside
// layout.html.
var pageNames = []string{"login", "observers", "deadletters", "deadletter", "confirm", "result", "deliveries", "config", "bus", "unauthorized"}

// New parses the templates.
func New(opts Options) (*Console, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Console{src: opts.Source, checkToken: opts.CheckToken, logger: opts.Logger, sessions: newSessions(),
		pages: map[string]*template.Template{}}
	for _, name := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		c.pages[name] = t
	}
	return c, nil
}

// Mount adds the console's routes to mux.
func (c *Console) Mount(mux *http.ServeMux) {
	static, _ := fs.Sub(assets, "static")
	files := http.StripPrefix(Prefix+"static/", http.FileServerFS(static))
	mux.Handle("GET "+Prefix+"static/", c.headers(files))
	mux.Handle("GET "+Prefix+"login", c.headers(http.HandlerFunc(c.loginForm)))
	mux.Handle("POST "+Prefix+"login", c.headers(http.HandlerFunc(c.login)))

	mux.Handle(Prefix, c.auth(http.HandlerFunc(c.notFound)))
	mux.Handle("GET "+Prefix+"{$}", c.auth(http.RedirectHandler(Prefix+"observers", http.StatusSeeOther)))
	mux.Handle("POST "+Prefix+"logout", c.auth(http.HandlerFunc(c.logout)))
	mux.Handle("GET "+Prefix+"observers", c.auth(http.HandlerFunc(c.observers)))
	mux.Handle("GET "+Prefix+"deadletters", c.auth(http.HandlerFunc(c.deadLetters)))
	mux.Handle("GET "+Prefix+"deadletters/{id}", c.auth(http.HandlerFunc(c.deadLetter)))
	mux.Handle("POST "+Prefix+"deadletters/action", c.auth(http.HandlerFunc(c.deadLetterAction)))
	mux.Handle("GET "+Prefix+"deliveries", c.auth(http.HandlerFunc(c.deliveries)))
	mux.Handle("GET "+Prefix+"config", c.auth(http.HandlerFunc(c.config)))
	mux.Handle("GET "+Prefix+"bus", c.auth(http.HandlerFunc(c.bus)))
}

// Routes lists the console's authenticated routes ("METHOD path", with
// a sample id), for the tests that check each one refuses strangers.
func Routes() []string {
	return []string{
		"GET " + Prefix, "GET " + Prefix + "observers", "GET " + Prefix + "observers?partial=1",
		"GET " + Prefix + "deadletters", "GET " + Prefix + "deadletters/x", "POST " + Prefix + "deadletters/action",
		"GET " + Prefix + "deliveries", "GET " + Prefix + "deliveries?partial=1", "GET " + Prefix + "config",
		"GET " + Prefix + "bus", "GET " + Prefix + "bus?partial=1", "POST " + Prefix + "logout", "GET " + Prefix + "nosuchpage",
	}
}

// headers sets the security headers of every console answer.
func (c *Console) headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", csp)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("X-Frame-Options", "DENY")
		if !strings.HasPrefix(req.URL.Path, Prefix+"static/") {
			hd.Set("Cache-Control", "no-store")
		}
		h.ServeHTTP(w, req)
	})
}

// auth answers 401, with the login form, unless the request carries
// the admin token or a session; and 403 to a POST from another origin.
func (c *Console) auth(h http.Handler) http.Handler {
	return c.headers(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !c.authenticated(req) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="millrace console"`)
			c.render(w, http.StatusUnauthorized, "unauthorized", page{Title: "Sign in"})
			return
		}
		if req.Method != http.MethodGet && req.Method != http.MethodHead && !sameOrigin(req) {
			http.Error(w, "cross-origin request refused", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, req)
	}))
}

// page is what every template gets; Data is the page's own.
type page struct {
	Title    string
	Nav      string
	Topology string
	Data     any
	Error    string
}

func (c *Console) render(w http.ResponseWriter, status int, name string, p page) {
	c.renderTemplate(w, status, name, "layout.html", p)
}

// renderPartial renders only the page's live part (the "live"
// template), for console.js's periodic refresh.
func (c *Console) renderPartial(w http.ResponseWriter, name string, p page) {
	c.renderTemplate(w, http.StatusOK, name, "live", p)
}

func (c *Console) renderTemplate(w http.ResponseWriter, status int, name, tmpl string, p page) {
	if c.src != nil && p.Topology == "" {
		p.Topology = c.src.Topology()
	}
	var buf bytes.Buffer
	if err := c.pages[name].ExecuteTemplate(&buf, tmpl, p); err != nil {
		c.logger.Error("console: render failed", "page", name, "err", err)
		http.Error(w, "render failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

var funcs = template.FuncMap{
	"ms": func(d time.Duration) string {
		if d <= 0 {
			return "–"
		}
		if d < time.Millisecond {
			return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
		}
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	},
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "–"
		}
		return t.UTC().Format("2006-01-02 15:04:05.000Z")
	},
	"ago": func(t time.Time) string {
		d := time.Since(t).Round(time.Second)
		if d < time.Second {
			return "just now"
		}
		return d.String() + " ago"
	},
	"short": func(s string) string {
		if len(s) > 13 {
			return s[:8] + "…"
		}
		return s
	},
}
