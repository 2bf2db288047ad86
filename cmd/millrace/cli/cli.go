package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/event"
	"github.com/millrace/millrace/internal/goruntime"
	"github.com/millrace/millrace/middleware"
	"github.com/millrace/millrace/router"
	"github.com/millrace/millrace/topologies"
)

// Exit codes.
const (
	ExitOK      = 0
	ExitFailure = 1
	// ExitInvalid: the config (or input) is invalid, or a service it
	// names did not answer within router.startup_timeout. Either way the
	// fix is in the config or in the deployment around it, and a restart
	// alone does not help.
	ExitInvalid = 2
)

// Version is set at build time with -ldflags "-X ...cli.Version=v1.2.3".
var Version = "dev"

type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Main runs the command line with args and returns the exit code.
func Main(o Options, args []string) int {
	root := newRoot(o, os.Stdout, os.Stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(os.Stderr, ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(os.Stderr, "error:", err)
	return ExitFailure
}

func newRoot(o Options, stdout, stderr io.Writer) *cobra.Command {
	var logLevel, logFormat string
	root := &cobra.Command{
		Use:           "millrace",
		Short:         "Turn database changes into actions",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&logLevel, "log-level", "", "debug, info, warn or error (overrides log.level)")
	root.PersistentFlags().StringVar(&logFormat, "log-format", "", "auto, text or json (overrides log.format)")
	logger := func(cfg *config.Config) *slog.Logger {
		level, format := cfg.Log.Level, cfg.Log.Format
		if logLevel != "" {
			level = logLevel
		}
		if logFormat != "" {
			format = logFormat
		}
		return NewLogger(stderr, level, format)
	}
	root.AddCommand(runCmd(o, logger), validateCmd(o, stdout), configCmd(o, stdout), emitCmd(stdout), versionCmd(stdout), dlqCmd(stdout, stderr), migrateCmd(o, stdout), watchCmd(o, stdout), unwatchCmd(o, stdout),
		backfillCmd(o, stdout, logger), tryCmd(o, stdout), recordCmd(o, stdout, stderr), verifyCmd(o, stdout, stderr))
	return root
}

// NewLogger returns a slog logger writing to w: text when w is a
// terminal and format is auto, JSON otherwise.
func NewLogger(w io.Writer, level, format string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: l}
	if format == "text" || (format == "auto" && isTerminal(w)) {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// load reads and validates a config file, and checks it against the
// registries; every problem is listed.
func load(o Options, path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	switch {
	case err == nil:
		err = router.Check(cfg, o.Actions, o.Topologies)
	case cfg != nil:
		// The file decoded, with problems: the topology's own checks
		// report theirs beside them. The actions are checked once the
		// rest is valid.
		err = errors.Join(err, o.Topologies.Check(cfg))
	}
	if err != nil {
		return cfg, &exitError{code: ExitInvalid, err: formatErrors(path, err)}
	}
	return cfg, nil
}

func formatErrors(path string, err error) error {
	errs := config.Errors(err)
	var b strings.Builder
	name := path
	if name == "" {
		name = "config"
	}
	fmt.Fprintf(&b, "%s: %d problem(s):", name, len(errs))
	for _, e := range errs {
		fmt.Fprintf(&b, "\n  %v", e)
	}
	return errors.New(b.String())
}

func runCmd(o Options, logger func(*config.Config) *slog.Logger) *cobra.Command {
	var path, role, addrFile string
	var wait bool
	cmd := &cobra.Command{
		Use:   "run -c FILE",
		Short: "Run millrace with a config file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := load(o, path)
			if err != nil {
				return err
			}
			if role != "" {
				cfg.Role = role
				if err := cfg.Validate(); err != nil {
					return &exitError{code: ExitInvalid, err: formatErrors(path, err)}
				}
			}
			if err := cfg.CheckEnv(nil, o.Topologies.Features(cfg.Topology)); err != nil {
				return &exitError{code: ExitInvalid, err: formatErrors(path, err)}
			}
			if !wait {
				cfg.Router.StartupTimeout = 0
			}
			log := logger(cfg)
			for _, n := range o.Topologies.Notes(cfg) {
				log.Warn(n)
			}
			topo, _ := o.Topologies.Lookup(cfg.Topology)
			rs, err := goruntime.Apply(cfg.Runtime, topo.GCPercent, os.Getenv)
			if err != nil {
				return &exitError{code: ExitInvalid, err: err}
			}
			log.Info("go runtime", rs.LogAttrs()...)
			ropts := router.Options{Actions: o.Actions, Topologies: o.Topologies, Logger: log}
			if addrFile != "" {
				ropts.Listening = func(addr string) error { return writeAddrFile(addrFile, addr) }
				defer func() { _ = os.Remove(addrFile) }()
			}
			r, err := router.New(cfg, ropts)
			if err != nil {
				return &exitError{code: ExitInvalid, err: formatErrors(path, err)}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := r.Run(ctx); err != nil {
				var dep *topologies.DependencyError
				if errors.As(err, &dep) {
					log.Error("millrace could not start: a service does not answer", "err", err)
					return &exitError{code: ExitInvalid}
				}
				log.Error("millrace stopped with an error", "err", err)
				return &exitError{code: ExitFailure}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "config file (TOML)")
	cmd.Flags().StringVar(&role, "role", "", "all, capture or observe (overrides role)")
	cmd.Flags().BoolVar(&wait, "wait", true, "wait up to router.startup_timeout for the services the config names (--wait=false: fail at once)")
	cmd.Flags().StringVar(&addrFile, "addr-file", "", "write the HTTP server's address (host:port) to this file once it listens, and remove it at exit (for http.addr with port 0)")
	return cmd
}

// writeAddrFile writes addr and a newline to path through a temporary
// file and a rename, so that a reader polling for the file never sees it
// half-written.
func writeAddrFile(path, addr string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(addr+"\n"), 0o644); err != nil {
		return fmt.Errorf("--addr-file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("--addr-file: %w", err)
	}
	return nil
}

func validateCmd(o Options, stdout io.Writer) *cobra.Command {
	var checkEnv bool
	cmd := &cobra.Command{
		Use:   "validate FILE...",
		Short: "Check config files without running them (exit 2 when invalid)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, files []string) error {
			var msgs []string
			for _, f := range files {
				cfg, err := load(o, f)
				if err == nil && checkEnv {
					if e := cfg.CheckEnv(nil, o.Topologies.Features(cfg.Topology)); e != nil {
						err = formatErrors(f, e)
					}
				}
				if err != nil {
					msgs = append(msgs, err.Error())
					continue
				}
				fmt.Fprintf(stdout, "%s: ok\n", f)
				for _, n := range o.Topologies.Notes(cfg) {
					fmt.Fprintf(stdout, "%s: note: %s\n", f, n)
				}
			}
			if len(msgs) > 0 {
				return &exitError{code: ExitInvalid, err: errors.New(strings.Join(msgs, "\n"))}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&checkEnv, "check-env", false, "also require every *_env variable to be set")
	return cmd
}

func configCmd(o Options, stdout io.Writer) *cobra.Command {
	var path string
	var stack bool
	cmd := &cobra.Command{
		Use:   "config -c FILE [--stack]",
		Short: "Print the effective config (defaults, file, environment) with secrets masked",
		Long: `Print the effective config (defaults, file, environment) with secrets masked.
With --stack, print instead the delivery stack each observer's events go
through, outermost layer first, as the config sets it up.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			cfg, err := load(o, path)
			if err != nil {
				return err
			}
			if stack {
				for _, name := range cfg.ObserverNames() {
					fmt.Fprintf(stdout, "observers.%s\n%s", name, middleware.FormatPlan(middleware.Plan(cfg, cfg.Observers[name])))
				}
				return nil
			}
			b, err := cfg.TOML()
			if err != nil {
				return err
			}
			_, err = stdout.Write(b)
			return err
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "config file (TOML)")
	cmd.Flags().BoolVar(&stack, "stack", false, "print each observer's delivery stack instead")
	return cmd
}

func emitCmd(stdout io.Writer) *cobra.Command {
	var (
		addr, file, typ, entity, entityID, data, id, tokenEnv string
		timeout                                               time.Duration
	)
	cmd := &cobra.Command{
		Use:   "emit [--file FILE | --type T --entity E --entity-id ID --data JSON]",
		Short: "Send an event to a running millrace (POST /v1/events)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var body []byte
			if file != "" {
				b, err := os.ReadFile(file)
				if err != nil {
					return err
				}
				body = b
			} else {
				ev := &event.Event{ID: id, Type: event.Type(strings.ToUpper(typ)), Entity: entity, EntityID: entityID, Timestamp: time.Now().UTC()}
				if ev.ID == "" {
					ev.ID = uuid.NewString()
				}
				full, err := event.Decode(fmt.Appendf(nil, `{"id":%q,"event_type":%q,"entity_type":%q,"entity_id":%q,"data":%s}`,
					ev.ID, ev.Type, ev.Entity, ev.EntityID, data))
				if err != nil {
					return &exitError{code: ExitInvalid, err: err}
				}
				full.Timestamp = ev.Timestamp
				if body, err = event.Encode(full); err != nil {
					return err
				}
			}
			url := strings.TrimSuffix(addr, "/") + "/v1/events"
			if !strings.Contains(addr, "://") {
				url = "http://" + url
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
			if err != nil {
				return err
			}
			req.Header.Set("Content-Type", "application/json")
			if token := os.Getenv(tokenEnv); token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("emit: %w", err)
			}
			defer resp.Body.Close()
			out, _ := io.ReadAll(resp.Body)
			fmt.Fprintf(stdout, "%s %s", resp.Status, out)
			if resp.StatusCode >= 300 {
				return &exitError{code: ExitFailure}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "127.0.0.1:8080", "address of the running millrace")
	f.StringVarP(&file, "file", "f", "", "JSON file with one event or an array")
	f.StringVar(&typ, "type", "CUSTOM", "event type")
	f.StringVar(&entity, "entity", "", "entity type")
	f.StringVar(&entityID, "entity-id", "", "entity id")
	f.StringVar(&data, "data", "{}", "data as a JSON object")
	f.StringVar(&id, "id", "", "event id (default: a new UUID)")
	f.DurationVar(&timeout, "timeout", 10*time.Second, "request timeout")
	f.StringVar(&tokenEnv, "token-env", DefaultIngestTokenEnv, "variable holding the ingest token (sent when set)")
	return cmd
}

// DefaultIngestTokenEnv is the variable emit reads its ingest token from,
// unless --token-env names another; the example configs name it too.
const DefaultIngestTokenEnv = "MILLRACE_INGEST_TOKEN"

func versionCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			v := Version
			if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
				v = bi.Main.Version
			}
			fmt.Fprintf(stdout, "millrace %s\n", v)
		},
	}
}
