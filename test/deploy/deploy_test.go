package deploy_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/knadh/koanf/parsers/toml/v2"
	"go.yaml.in/yaml/v3"

	"github.com/millrace/millrace/cmd/millrace/cli"
	"github.com/millrace/millrace/config"
	"github.com/millrace/millrace/router"
)

// What the guides say, and the files must use.
const (
	postgresImage = "postgres:17"
	redisImage    = "redis:7.4"
	natsImage     = "nats:2.11-alpine"
	millraceImage = "millrace:dev"
	// configPath is where every millrace container finds its config.
	configPath = "/etc/millrace/millrace.toml"
	// binaryPath is the binary in the image (the Dockerfile's ENTRYPOINT).
	binaryPath = "/usr/local/bin/millrace"
	// initdbDir is where the PostgreSQL image looks for init scripts.
	initdbDir = "/docker-entrypoint-initdb.d"
)

// root is the repository, relative to this package.
var root = filepath.Join("..", "..")

// workload is a group of millrace processes: the role on their command
// line and how many run.
type workload struct {
	role     string
	replicas int
}

// topology is one deployment: its example config, its files and what
// they must hold.
type topology struct {
	name  string
	guide string
	// backing are the services millrace connects to, by host name, with
	// their image; composeBacking, when set, replaces them in the compose
	// file (where a cluster's servers are services of their own).
	backing, composeBacking map[string]string
	// k8s are the millrace Deployments of deploy/k8s/<name>, by name;
	// compose the millrace services of deploy/compose/<name>.yml.
	k8s, compose map[string]workload
}

var topologies = []topology{
	{
		name: "postgres", guide: "01-postgresql-only.md",
		backing: map[string]string{"postgres": postgresImage},
		k8s:     map[string]workload{"millrace": {"all", 2}},
		compose: map[string]workload{"millrace": {"all", 1}, "millrace-standby": {"all", 1}},
	},
	{
		name: "redis", guide: "02-postgresql-redis.md",
		backing: map[string]string{"postgres": postgresImage, "redis": redisImage},
		k8s:     map[string]workload{"millrace": {"all", 3}},
		compose: map[string]workload{"millrace": {"all", 1}, "worker": {"observe", 2}},
	},
	{
		name: "nats", guide: "03-nats-distributed.md",
		backing: map[string]string{"postgres": postgresImage, "redis": redisImage, "nats": natsImage},
		composeBacking: map[string]string{"postgres": postgresImage, "redis": redisImage,
			"nats-1": natsImage, "nats-2": natsImage, "nats-3": natsImage},
		k8s:     map[string]workload{"millrace-capture": {"capture", 2}, "millrace-worker": {"observe", 3}},
		compose: map[string]workload{"capture": {"capture", 1}, "capture-standby": {"capture", 1}, "worker": {"observe", 3}},
	},
	{
		name: "multidb", guide: "04-multi-database.md",
		backing: map[string]string{"postgres-orders": postgresImage, "postgres-billing": postgresImage, "redis": redisImage, "nats": natsImage},
		k8s:     map[string]workload{"millrace-capture": {"capture", 1}, "millrace-worker": {"observe", 3}},
		compose: map[string]workload{"capture": {"capture", 1}, "worker": {"observe", 3}},
	},
}

func topologyNamed(t *testing.T, name string) topology {
	t.Helper()
	for _, tp := range topologies {
		if tp.name == name {
			return tp
		}
	}
	t.Fatalf("no topology %q", name)
	return topology{}
}

// problems collects what a check found wrong.
type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func (p problems) report(t *testing.T) {
	t.Helper()
	for _, s := range p {
		t.Error(s)
	}
}

// ---- the example configs ----

func exampleConfig(name string) string { return filepath.Join(root, "topologies", name+".toml") }

// sameTOML reports whether two TOML documents hold the same values.
func sameTOML(a, b []byte) (bool, error) {
	ma, err := toml.Parser().Unmarshal(a)
	if err != nil {
		return false, err
	}
	mb, err := toml.Parser().Unmarshal(b)
	if err != nil {
		return false, err
	}
	return reflect.DeepEqual(ma, mb), nil
}

// env is a process environment: the value of each variable, and whether
// it comes from a Kubernetes Secret.
type env struct {
	values     map[string]string
	fromSecret map[string]bool
}

func (e env) list() []string {
	out := make([]string, 0, len(e.values))
	for k, v := range e.values {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// effective loads a config file's bytes with an environment and a role
// as `millrace run -c FILE --role ROLE` does, registries included.
func effective(data []byte, e env, role string) (*config.Config, error) {
	cfg, err := config.Parse(data, e.list())
	if err != nil {
		return nil, err
	}
	o := cli.Defaults()
	if err := router.Check(cfg, o.Actions, o.Topologies); err != nil {
		return nil, err
	}
	cfg.Role = role
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// endpoint is a service a millrace process connects to.
type endpoint struct {
	key  string // the config key it comes from
	kind string // postgres, redis or nats
	url  *url.URL
}

func (ep endpoint) host() string { return ep.url.Hostname() }

func (ep endpoint) port() int {
	if p := ep.url.Port(); p != "" {
		n, _ := strconv.Atoi(p)
		return n
	}
	return map[string]int{"postgres": 5432, "redis": 6379, "nats": 4222}[ep.kind]
}

// endpoints lists the services cfg connects to, resolving *_env keys in e.
func endpoints(cfg *config.Config, e env, p *problems) []endpoint {
	var out []endpoint
	add := func(key, kind, inline, envName string) {
		raw := inline
		if envName != "" {
			raw = e.values[envName]
		}
		if raw == "" {
			return
		}
		u, err := url.Parse(raw)
		if err != nil || u.Hostname() == "" {
			p.add("%s: %q is not a URL with a host", key, raw)
			return
		}
		out = append(out, endpoint{key: key, kind: kind, url: u})
	}
	for i, s := range cfg.Sources {
		add(config.Index("sources", i)+".postgres_url", "postgres", s.PostgresURL, s.PostgresURLEnv)
	}
	add("postgres.url", "postgres", cfg.Postgres.URL, cfg.Postgres.URLEnv)
	if cfg.Topology != "postgres" {
		add("redis.url", "redis", cfg.Redis.URL, cfg.Redis.URLEnv)
	}
	if cfg.Topology == "nats" || cfg.Topology == "multidb" {
		// A cluster's servers, comma-separated.
		for _, u := range strings.Split(e.values["MILLRACE_NATS__URL"], ",") {
			if u == "" {
				u = cfg.NATS.URL
			}
			add("nats.url", "nats", u, "")
		}
	}
	return out
}

// checkProcess checks what a millrace process of either file format must
// satisfy: its effective config is valid (so ingest has credentials or
// is off, since it listens beyond loopback), listens on every interface
// on the expected port, names only variables it is given, from a Secret
// (k8s) or an env file (compose), and drains within the grace period.
func checkProcess(where string, tp topology, data []byte, e env, role string, grace time.Duration, k8s bool, p *problems) (*config.Config, int) {
	cfg, err := effective(data, e, role)
	if err != nil {
		p.add("%s: the config with this environment does not load: %v", where, err)
		return nil, 0
	}
	if cfg.Topology != tp.name {
		p.add("%s: topology = %q, want %q", where, cfg.Topology, tp.name)
	}
	host, portStr, err := net.SplitHostPort(cfg.HTTP.Addr)
	port, _ := strconv.Atoi(portStr)
	switch {
	case err != nil:
		p.add("%s: http.addr %q: %v", where, cfg.HTTP.Addr, err)
	case host != "0.0.0.0" && host != "":
		p.add("%s: http.addr is %q: a container must listen on 0.0.0.0 (set MILLRACE_HTTP__ADDR), not on loopback", where, cfg.HTTP.Addr)
	}
	refs := cfg.EnvRefs()
	paths := make([]string, 0, len(refs))
	for path := range refs {
		paths = append(paths, path)
	}
	sort.Strings(paths)
	for _, path := range paths {
		name := refs[path]
		switch {
		case e.values[name] == "":
			p.add("%s: %s names %s, which the environment does not provide", where, path, name)
		case k8s && !e.fromSecret[name]:
			p.add("%s: %s names %s, which must come from a Secret (valueFrom.secretKeyRef), not a literal value", where, path, name)
		case !e.fromSecret[name]:
			p.add("%s: %s names %s, which must come from an env_file, not the environment block", where, path, name)
		}
	}
	if err := cfg.CheckEnv(func(k string) (string, bool) { v, ok := e.values[k]; return v, ok }, cli.Defaults().Topologies.Features(cfg.Topology)); err != nil {
		p.add("%s: %v", where, err)
	}
	if shutdown := cfg.Router.ShutdownTimeout.D(); grace <= shutdown {
		p.add("%s: grace period %s is not longer than router.shutdown_timeout %s", where, grace, shutdown)
	}
	return cfg, port
}

// creates reports whether sql creates table.
func creates(sql, table string) bool {
	name := table
	if i := strings.LastIndex(table, "."); i >= 0 {
		name = table[i+1:]
	}
	re := regexp.MustCompile(`(?i)create\s+table\s+(if\s+not\s+exists\s+)?("?\w+"?\.)?"?` + regexp.QuoteMeta(name) + `"?\s*\(`)
	return re.MatchString(sql)
}

// tablesOn returns the tables the sources of cfg read from host.
func tablesOn(cfg *config.Config, e env, host string) []string {
	var out []string
	for _, s := range cfg.Sources {
		raw := s.PostgresURL
		if s.PostgresURLEnv != "" {
			raw = e.values[s.PostgresURLEnv]
		}
		if u, err := url.Parse(raw); err == nil && u.Hostname() == host {
			out = append(out, s.Tables...)
		}
	}
	return out
}

// checkPostgresURL checks that ep's credentials and database are those
// the PostgreSQL container is created with.
func checkPostgresURL(where string, ep endpoint, pg env, p *problems) {
	user, db := pg.values["POSTGRES_USER"], pg.values["POSTGRES_DB"]
	if user == "" {
		user = "postgres"
	}
	if db == "" {
		db = user
	}
	pass, _ := ep.url.User.Password()
	if ep.url.User.Username() != user {
		p.add("%s: %s connects as %q, the PostgreSQL container creates %q", where, ep.key, ep.url.User.Username(), user)
	}
	if pass != pg.values["POSTGRES_PASSWORD"] {
		p.add("%s: %s has another password than the PostgreSQL container's POSTGRES_PASSWORD", where, ep.key)
	}
	if strings.TrimPrefix(ep.url.Path, "/") != db {
		p.add("%s: %s names database %q, the PostgreSQL container creates %q", where, ep.key, strings.TrimPrefix(ep.url.Path, "/"), db)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func wantArgs(role string) []string { return []string{"run", "-c", configPath, "--role", role} }

// ---- Docker Compose ----

type composeFile struct {
	Name     string                    `yaml:"name"`
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
	// Extensions are the top-level x-* keys (the shared millrace block).
	Extensions map[string]any `yaml:",inline"`
}

type composeService struct {
	Image           string                      `yaml:"image"`
	Build           *composeBuild               `yaml:"build"`
	Command         []string                    `yaml:"command"`
	Environment     map[string]string           `yaml:"environment"`
	EnvFile         []string                    `yaml:"env_file"`
	Volumes         []string                    `yaml:"volumes"`
	Ports           []string                    `yaml:"ports"`
	Expose          []string                    `yaml:"expose"`
	DependsOn       map[string]composeDependsOn `yaml:"depends_on"`
	Healthcheck     *composeHealthcheck         `yaml:"healthcheck"`
	Restart         string                      `yaml:"restart"`
	StopGracePeriod string                      `yaml:"stop_grace_period"`
	Deploy          *composeDeploy              `yaml:"deploy"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

type composeDependsOn struct {
	Condition string `yaml:"condition"`
}

type composeHealthcheck struct {
	Test     []string `yaml:"test"`
	Interval string   `yaml:"interval"`
	Timeout  string   `yaml:"timeout"`
	Retries  int      `yaml:"retries"`
}

type composeDeploy struct {
	Replicas *int `yaml:"replicas"`
}

func composePath(name string) string { return filepath.Join(root, "deploy", "compose", name+".yml") }

// loadCompose decodes a compose file strictly: a misspelt key is an error.
func loadCompose(data []byte) (*composeFile, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f composeFile
	if err := dec.Decode(&f); err != nil {
		return nil, err
	}
	return &f, nil
}

// serviceEnv is a service's environment: its env files (relative to
// dir), then its environment block; fromSecret marks what came from an
// env file.
func serviceEnv(s composeService, dir string, p *problems) env {
	e := env{values: map[string]string{}, fromSecret: map[string]bool{}}
	for _, f := range s.EnvFile {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			p.add("env_file: %v", err)
			continue
		}
		for i, line := range strings.Split(string(data), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				p.add("env_file %s:%d: want KEY=value, got %q", f, i+1, line)
				continue
			}
			e.values[k], e.fromSecret[k] = v, true
		}
	}
	for k, v := range s.Environment {
		e.values[k], e.fromSecret[k] = v, false
	}
	return e
}

// bindMount splits "source:target[:mode]" and resolves a relative source
// against dir; named volumes have no "/" or "." in front.
func bindMount(dir, spec string) (source, target string, bind bool) {
	parts := strings.Split(spec, ":")
	if len(parts) < 2 {
		return "", "", false
	}
	source, target = parts[0], parts[1]
	if !strings.HasPrefix(source, ".") && !strings.HasPrefix(source, "/") {
		return source, target, false
	}
	if !filepath.IsAbs(source) {
		source = filepath.Join(dir, source)
	}
	return filepath.Clean(source), target, true
}

func checkCompose(tp topology, f *composeFile, dir string) problems {
	var p problems
	for k := range f.Extensions {
		if !strings.HasPrefix(k, "x-") {
			p.add("compose: unknown top-level key %q", k)
		}
	}
	millrace := map[string]composeService{}
	backing := map[string]composeService{}
	for name, s := range f.Services {
		if s.Image == millraceImage {
			millrace[name] = s
		} else {
			backing[name] = s
		}
	}
	if got, want := sortedKeys(millrace), sortedKeys(tp.compose); !slices.Equal(got, want) {
		p.add("compose: millrace services (image %s) = %v, want %v", millraceImage, got, want)
	}
	want := tp.backing
	if tp.composeBacking != nil {
		want = tp.composeBacking
	}
	if got, want := sortedKeys(backing), sortedKeys(want); !slices.Equal(got, want) {
		p.add("compose: other services = %v, want %v", got, want)
	}
	for name, img := range want {
		if s, ok := backing[name]; ok && s.Image != img {
			p.add("compose: service %s: image %q, want %q (the guide's)", name, s.Image, img)
		}
	}

	example, err := os.ReadFile(exampleConfig(tp.name))
	if err != nil {
		p.add("%v", err)
		return p
	}
	for _, name := range sortedKeys(millrace) {
		s := millrace[name]
		where := "compose service " + name
		w, ok := tp.compose[name]
		if !ok {
			continue
		}
		if s.Build == nil {
			p.add("%s: no build section", where)
		} else {
			if ctx := filepath.Clean(filepath.Join(dir, s.Build.Context)); ctx != filepath.Clean(root) {
				p.add("%s: build context %q is not the repository root", where, s.Build.Context)
			}
			if s.Build.Dockerfile != "Dockerfile" {
				p.add("%s: build dockerfile %q, want Dockerfile", where, s.Build.Dockerfile)
			}
		}
		if !slices.Equal(s.Command, wantArgs(w.role)) {
			p.add("%s: command %q, want %q", where, s.Command, wantArgs(w.role))
		}
		replicas := 1
		if s.Deploy != nil && s.Deploy.Replicas != nil {
			replicas = *s.Deploy.Replicas
		}
		if replicas != w.replicas {
			p.add("%s: %d replicas, want %d", where, replicas, w.replicas)
		}
		mounted := false
		for _, v := range s.Volumes {
			src, target, bind := bindMount(dir, v)
			if target != configPath {
				continue
			}
			mounted = true
			if !bind || src != filepath.Clean(exampleConfig(tp.name)) {
				p.add("%s: %s is mounted from %q, want topologies/%s.toml", where, configPath, src, tp.name)
			}
		}
		if !mounted {
			p.add("%s: nothing is mounted at %s", where, configPath)
		}
		e := serviceEnv(s, dir, &p)
		grace := 10 * time.Second // Docker's default
		if s.StopGracePeriod != "" {
			if grace, err = time.ParseDuration(s.StopGracePeriod); err != nil {
				p.add("%s: stop_grace_period: %v", where, err)
			}
		}
		cfg, port := checkProcess(where, tp, example, e, w.role, grace, false, &p)
		if cfg == nil {
			continue
		}
		published := false
		for _, ps := range s.Ports {
			parts := strings.Split(ps, ":")
			if parts[len(parts)-1] == strconv.Itoa(port) {
				published = true
			} else {
				p.add("%s: port %q does not map to http.addr's port %d", where, ps, port)
			}
		}
		for _, ps := range s.Expose {
			if ps == strconv.Itoa(port) {
				published = true
			} else {
				p.add("%s: exposes %q, not http.addr's port %d", where, ps, port)
			}
		}
		if !published {
			p.add("%s: neither publishes nor exposes http.addr's port %d", where, port)
		}
		for _, ep := range endpoints(cfg, e, &p) {
			b, ok := backing[ep.host()]
			if !ok {
				p.add("%s: %s points at %q, which is no service of the file", where, ep.key, ep.host())
				continue
			}
			if want := map[string]string{"postgres": postgresImage, "redis": redisImage, "nats": natsImage}[ep.kind]; b.Image != want {
				p.add("%s: %s points at %s, whose image %q is not %s", where, ep.key, ep.host(), b.Image, want)
			}
			if d, ok := s.DependsOn[ep.host()]; !ok || d.Condition != "service_healthy" {
				p.add("%s: does not depend on %s with condition service_healthy", where, ep.host())
			}
			if b.Healthcheck == nil || len(b.Healthcheck.Test) == 0 {
				p.add("service %s: no healthcheck, which service_healthy needs", ep.host())
			}
			if ep.kind == "postgres" {
				checkPostgresURL(where, ep, serviceEnv(b, dir, &p), &p)
				var sql strings.Builder
				for _, v := range b.Volumes {
					if src, target, bind := bindMount(dir, v); bind && strings.HasPrefix(target, initdbDir+"/") {
						data, err := os.ReadFile(src)
						if err != nil {
							p.add("service %s: %v", ep.host(), err)
						}
						sql.Write(data)
					}
				}
				for _, table := range tablesOn(cfg, e, ep.host()) {
					if !creates(sql.String(), table) {
						p.add("service %s: no init script in %s creates table %s, which the config watches", ep.host(), initdbDir, table)
					}
				}
			}
		}
	}
	return p
}

func TestCompose(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			f := readCompose(t, tp.name)
			checkCompose(tp, f, filepath.Dir(composePath(tp.name))).report(t)
		})
	}
}

// readCompose reads and decodes the compose file of topology name.
func readCompose(t *testing.T, name string) *composeFile {
	t.Helper()
	path := composePath(name)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := loadCompose(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return f
}

// ---- Kubernetes ----

type objectMeta struct {
	Name        string            `yaml:"name"`
	Namespace   string            `yaml:"namespace"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type header struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
}

// intOrString is a port given by number or by name.
type intOrString struct {
	Int int
	Str string
}

func (v *intOrString) UnmarshalYAML(n *yaml.Node) error {
	if n.Tag == "!!int" {
		i, err := strconv.Atoi(n.Value)
		v.Int = i
		return err
	}
	v.Str = n.Value
	return nil
}

type workloadObject struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	Spec       struct {
		Replicas    *int   `yaml:"replicas"`
		ServiceName string `yaml:"serviceName"`
		// PodManagementPolicy: Parallel for a cluster whose members
		// must start together.
		PodManagementPolicy string `yaml:"podManagementPolicy"`
		Selector            struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Strategy map[string]any `yaml:"strategy"`
		Template struct {
			Metadata objectMeta `yaml:"metadata"`
			Spec     podSpec    `yaml:"spec"`
		} `yaml:"template"`
		VolumeClaimTemplates []map[string]any `yaml:"volumeClaimTemplates"`
	} `yaml:"spec"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int           `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               map[string]any `yaml:"securityContext"`
	ServiceAccountName            string         `yaml:"serviceAccountName"`
	InitContainers                []container    `yaml:"initContainers"`
	Containers                    []container    `yaml:"containers"`
	Volumes                       []podVolume    `yaml:"volumes"`
}

type container struct {
	Name            string          `yaml:"name"`
	Image           string          `yaml:"image"`
	ImagePullPolicy string          `yaml:"imagePullPolicy"`
	Command         []string        `yaml:"command"`
	Args            []string        `yaml:"args"`
	Env             []envVar        `yaml:"env"`
	Ports           []containerPort `yaml:"ports"`
	ReadinessProbe  *probe          `yaml:"readinessProbe"`
	LivenessProbe   *probe          `yaml:"livenessProbe"`
	StartupProbe    *probe          `yaml:"startupProbe"`
	Resources       map[string]any  `yaml:"resources"`
	SecurityContext map[string]any  `yaml:"securityContext"`
	VolumeMounts    []volumeMount   `yaml:"volumeMounts"`
}

type envVar struct {
	Name      string  `yaml:"name"`
	Value     *string `yaml:"value"`
	ValueFrom *struct {
		SecretKeyRef    *keyRef        `yaml:"secretKeyRef"`
		ConfigMapKeyRef *keyRef        `yaml:"configMapKeyRef"`
		FieldRef        map[string]any `yaml:"fieldRef"`
	} `yaml:"valueFrom"`
}

type keyRef struct {
	Name     string `yaml:"name"`
	Key      string `yaml:"key"`
	Optional *bool  `yaml:"optional"`
}

type containerPort struct {
	Name          string `yaml:"name"`
	ContainerPort int    `yaml:"containerPort"`
	Protocol      string `yaml:"protocol"`
}

type probe struct {
	HTTPGet *struct {
		Path string      `yaml:"path"`
		Port intOrString `yaml:"port"`
	} `yaml:"httpGet"`
	Exec *struct {
		Command []string `yaml:"command"`
	} `yaml:"exec"`
	TCPSocket           map[string]any `yaml:"tcpSocket"`
	InitialDelaySeconds int            `yaml:"initialDelaySeconds"`
	PeriodSeconds       int            `yaml:"periodSeconds"`
	TimeoutSeconds      int            `yaml:"timeoutSeconds"`
	FailureThreshold    int            `yaml:"failureThreshold"`
	SuccessThreshold    int            `yaml:"successThreshold"`
}

type podVolume struct {
	Name      string `yaml:"name"`
	ConfigMap *struct {
		Name  string `yaml:"name"`
		Items []struct {
			Key  string `yaml:"key"`
			Path string `yaml:"path"`
		} `yaml:"items"`
	} `yaml:"configMap"`
	Secret                map[string]any `yaml:"secret"`
	EmptyDir              map[string]any `yaml:"emptyDir"`
	PersistentVolumeClaim map[string]any `yaml:"persistentVolumeClaim"`
}

type volumeMount struct {
	Name      string `yaml:"name"`
	MountPath string `yaml:"mountPath"`
	SubPath   string `yaml:"subPath"`
	ReadOnly  bool   `yaml:"readOnly"`
}

type serviceObject struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	Spec       struct {
		Type      string `yaml:"type"`
		ClusterIP string `yaml:"clusterIP"`
		// PublishNotReadyAddresses: a headless Service of a cluster's
		// routes, resolvable before its members are ready.
		PublishNotReadyAddresses bool              `yaml:"publishNotReadyAddresses"`
		Selector                 map[string]string `yaml:"selector"`
		Ports                    []struct {
			Name       string      `yaml:"name"`
			Port       int         `yaml:"port"`
			TargetPort intOrString `yaml:"targetPort"`
			Protocol   string      `yaml:"protocol"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type configMapObject struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   objectMeta        `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
}

type secretObject struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   objectMeta        `yaml:"metadata"`
	Type       string            `yaml:"type"`
	StringData map[string]string `yaml:"stringData"`
	Data       map[string]string `yaml:"data"`
}

// manifests are the objects of one deploy/k8s/<name> directory.
type manifests struct {
	workloads  map[string]*workloadObject // by name; Deployments and StatefulSets
	services   map[string]*serviceObject
	configMaps map[string]*configMapObject
	secrets    map[string]map[string]string // decoded values
}

var apiVersions = map[string]string{
	"Deployment": "apps/v1", "StatefulSet": "apps/v1", "Service": "v1", "ConfigMap": "v1", "Secret": "v1",
}

// strict decodes one document's node into out, refusing unknown fields.
func strict(n *yaml.Node, out any) error {
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	return dec.Decode(out)
}

// loadManifests reads every multi-document YAML file of dir.
func loadManifests(dir string) (*manifests, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: no *.yaml", dir)
	}
	sort.Strings(files)
	m := &manifests{workloads: map[string]*workloadObject{}, services: map[string]*serviceObject{},
		configMaps: map[string]*configMapObject{}, secrets: map[string]map[string]string{}}
	var errs []error
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for i := 0; ; i++ {
			var doc yaml.Node
			if err := dec.Decode(&doc); err == io.EOF {
				break
			} else if err != nil {
				return nil, fmt.Errorf("%s: %w", file, err)
			}
			if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
				continue // an empty document
			}
			where := fmt.Sprintf("%s document %d", filepath.Base(file), i+1)
			var h header
			if err := doc.Decode(&h); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
			if want, ok := apiVersions[h.Kind]; !ok {
				errs = append(errs, fmt.Errorf("%s: unexpected kind %q", where, h.Kind))
				continue
			} else if h.APIVersion != want {
				errs = append(errs, fmt.Errorf("%s: %s apiVersion %q, want %q", where, h.Kind, h.APIVersion, want))
			}
			if h.Metadata.Name == "" {
				errs = append(errs, fmt.Errorf("%s: no metadata.name", where))
			}
			dup := func(exists bool) {
				if exists {
					errs = append(errs, fmt.Errorf("%s: a second %s named %s", where, h.Kind, h.Metadata.Name))
				}
			}
			switch h.Kind {
			case "Deployment", "StatefulSet":
				var w workloadObject
				err = strict(&doc, &w)
				_, exists := m.workloads[h.Metadata.Name]
				dup(exists)
				m.workloads[h.Metadata.Name] = &w
			case "Service":
				var s serviceObject
				err = strict(&doc, &s)
				_, exists := m.services[h.Metadata.Name]
				dup(exists)
				m.services[h.Metadata.Name] = &s
			case "ConfigMap":
				var c configMapObject
				err = strict(&doc, &c)
				_, exists := m.configMaps[h.Metadata.Name]
				dup(exists)
				m.configMaps[h.Metadata.Name] = &c
			case "Secret":
				var s secretObject
				err = strict(&doc, &s)
				_, exists := m.secrets[h.Metadata.Name]
				dup(exists)
				values := map[string]string{}
				for k, v := range s.Data {
					b, derr := base64.StdEncoding.DecodeString(v)
					if derr != nil {
						errs = append(errs, fmt.Errorf("%s: data.%s is not base64: %w", where, k, derr))
					}
					values[k] = string(b)
				}
				for k, v := range s.StringData {
					values[k] = v
				}
				m.secrets[h.Metadata.Name] = values
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s (%s %s): %w", where, h.Kind, h.Metadata.Name, err))
			}
		}
	}
	return m, errors.Join(errs...)
}

func k8sDir(name string) string { return filepath.Join(root, "deploy", "k8s", name) }

// containerEnv resolves a container's environment against the Secrets.
func (m *manifests) containerEnv(where string, c container, p *problems) env {
	e := env{values: map[string]string{}, fromSecret: map[string]bool{}}
	for _, v := range c.Env {
		if _, dup := e.values[v.Name]; dup {
			p.add("%s: env %s is set twice", where, v.Name)
		}
		switch {
		case v.Value != nil && v.ValueFrom == nil:
			e.values[v.Name] = *v.Value
		case v.Value == nil && v.ValueFrom != nil && v.ValueFrom.SecretKeyRef != nil:
			ref := v.ValueFrom.SecretKeyRef
			s, ok := m.secrets[ref.Name]
			if !ok {
				p.add("%s: env %s: no Secret %q in the manifests", where, v.Name, ref.Name)
				continue
			}
			val, ok := s[ref.Key]
			if !ok {
				p.add("%s: env %s: Secret %s has no key %s", where, v.Name, ref.Name, ref.Key)
				continue
			}
			e.values[v.Name], e.fromSecret[v.Name] = val, true
		default:
			p.add("%s: env %s: want value or valueFrom.secretKeyRef", where, v.Name)
		}
	}
	return e
}

// selects reports whether a selector picks pods with labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// portOf resolves a probe or Service target port against a container.
func portOf(c container, v intOrString) int {
	if v.Str == "" {
		return v.Int
	}
	for _, cp := range c.Ports {
		if cp.Name == v.Str {
			return cp.ContainerPort
		}
	}
	return -1
}

// serviceFor finds the Service named host and the workload it selects,
// and checks that it forwards port to one of the workload's ports.
func (m *manifests) serviceFor(where, host string, port int, p *problems) *workloadObject {
	svc, ok := m.services[host]
	if !ok {
		p.add("%s: no Service named %q", where, host)
		return nil
	}
	var picked []string
	for name, w := range m.workloads {
		if selects(svc.Spec.Selector, w.Spec.Template.Metadata.Labels) {
			picked = append(picked, name)
		}
	}
	if len(picked) != 1 {
		p.add("%s: Service %s selects %v, want exactly one workload", where, host, picked)
		return nil
	}
	w := m.workloads[picked[0]]
	for _, sp := range svc.Spec.Ports {
		if sp.Port != port {
			continue
		}
		target := sp.TargetPort
		if target.Int == 0 && target.Str == "" {
			target.Int = sp.Port
		}
		for _, c := range w.Spec.Template.Spec.Containers {
			if portOf(c, target) > 0 {
				return w
			}
		}
		p.add("%s: Service %s port %d targets %v, which no container of %s declares", where, host, port, target, w.Metadata.Name)
		return w
	}
	p.add("%s: Service %s has no port %d", where, host, port)
	return w
}

func checkK8s(tp topology, m *manifests) problems {
	var p problems
	example, err := os.ReadFile(exampleConfig(tp.name))
	if err != nil {
		p.add("%v", err)
		return p
	}
	millrace := map[string]*workloadObject{}
	backing := map[string]*workloadObject{}
	for name, w := range m.workloads {
		is := false
		for _, c := range w.Spec.Template.Spec.Containers {
			is = is || c.Image == millraceImage
		}
		if is {
			millrace[name] = w
		} else {
			backing[name] = w
		}
		if !selects(w.Spec.Selector.MatchLabels, w.Spec.Template.Metadata.Labels) {
			p.add("%s %s: selector.matchLabels do not match the pod template's labels", w.Kind, name)
		}
	}
	if got, want := sortedKeys(millrace), sortedKeys(tp.k8s); !slices.Equal(got, want) {
		p.add("k8s: millrace workloads (image %s) = %v, want %v", millraceImage, got, want)
	}
	if got, want := sortedKeys(backing), sortedKeys(tp.backing); !slices.Equal(got, want) {
		p.add("k8s: other workloads = %v, want %v", got, want)
	}
	for name, img := range tp.backing {
		w, ok := backing[name]
		if !ok {
			continue
		}
		if len(w.Spec.Template.Spec.Containers) != 1 || w.Spec.Template.Spec.Containers[0].Image != img {
			p.add("k8s: %s %s: want one container with image %q (the guide's)", w.Kind, name, img)
		}
	}

	for _, name := range sortedKeys(millrace) {
		w := millrace[name]
		where := w.Kind + " " + name
		want, ok := tp.k8s[name]
		if !ok {
			continue
		}
		if w.Kind != "Deployment" {
			p.add("%s: want a Deployment", where)
		}
		replicas := 1
		if w.Spec.Replicas != nil {
			replicas = *w.Spec.Replicas
		}
		if replicas != want.replicas {
			p.add("%s: replicas: %d, want %d", where, replicas, want.replicas)
		}
		pod := w.Spec.Template.Spec
		if len(pod.Containers) != 1 {
			p.add("%s: %d containers, want 1", where, len(pod.Containers))
			continue
		}
		c := pod.Containers[0]
		if len(c.Command) != 0 {
			p.add("%s: command %q overrides the image's entrypoint %s", where, c.Command, binaryPath)
		}
		if !slices.Equal(c.Args, wantArgs(want.role)) {
			p.add("%s: args %q, want %q", where, c.Args, wantArgs(want.role))
		}

		// The mounted config is the example config.
		mounted := false
		for _, vm := range c.VolumeMounts {
			file := ""
			switch {
			case vm.MountPath == configPath && vm.SubPath != "":
				file = vm.SubPath
			case vm.MountPath == filepath.Dir(configPath) && vm.SubPath == "":
				file = filepath.Base(configPath)
			default:
				continue
			}
			mounted = true
			var vol *podVolume
			for i := range pod.Volumes {
				if pod.Volumes[i].Name == vm.Name {
					vol = &pod.Volumes[i]
				}
			}
			if vol == nil || vol.ConfigMap == nil {
				p.add("%s: the volume mounted at %s is not a ConfigMap", where, vm.MountPath)
				continue
			}
			key := file
			for _, it := range vol.ConfigMap.Items {
				if it.Path == file {
					key = it.Key
				}
			}
			cm, ok := m.configMaps[vol.ConfigMap.Name]
			if !ok {
				p.add("%s: no ConfigMap %q in the manifests", where, vol.ConfigMap.Name)
				continue
			}
			content, ok := cm.Data[key]
			if !ok {
				p.add("%s: ConfigMap %s has no key %q", where, cm.Metadata.Name, key)
				continue
			}
			same, err := sameTOML([]byte(content), example)
			switch {
			case err != nil:
				p.add("%s: ConfigMap %s key %s: %v", where, cm.Metadata.Name, key, err)
			case !same:
				p.add("%s: ConfigMap %s key %s differs from topologies/%s.toml", where, cm.Metadata.Name, key, tp.name)
			}
		}
		if !mounted {
			p.add("%s: nothing is mounted at %s", where, configPath)
		}

		e := m.containerEnv(where, c, &p)
		grace := 30 * time.Second // Kubernetes' default
		if pod.TerminationGracePeriodSeconds != nil {
			grace = time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
		}
		cfg, port := checkProcess(where, tp, example, e, want.role, grace, true, &p)
		if cfg == nil {
			continue
		}
		declared := false
		for _, cp := range c.Ports {
			if cp.ContainerPort == port {
				declared = true
			} else {
				p.add("%s: containerPort %d is not http.addr's port %d", where, cp.ContainerPort, port)
			}
		}
		if !declared {
			p.add("%s: no containerPort %d (http.addr's port)", where, port)
		}
		for _, pr := range []struct {
			name, path string
			probe      *probe
		}{{"readinessProbe", "/readyz", c.ReadinessProbe}, {"livenessProbe", "/healthz", c.LivenessProbe}} {
			switch {
			case pr.probe == nil || pr.probe.HTTPGet == nil:
				p.add("%s: %s: want httpGet %s", where, pr.name, pr.path)
			case pr.probe.HTTPGet.Path != pr.path:
				p.add("%s: %s path %q, want %q", where, pr.name, pr.probe.HTTPGet.Path, pr.path)
			case portOf(c, pr.probe.HTTPGet.Port) != port:
				p.add("%s: %s port %v is not http.addr's port %d", where, pr.name, pr.probe.HTTPGet.Port, port)
			}
		}
		served := false
		for _, svc := range m.services {
			if !selects(svc.Spec.Selector, w.Spec.Template.Metadata.Labels) {
				continue
			}
			for _, sp := range svc.Spec.Ports {
				served = served || portOf(c, sp.TargetPort) == port
			}
		}
		if !served {
			p.add("%s: no Service forwards to http.addr's port %d", where, port)
		}

		for _, ep := range endpoints(cfg, e, &p) {
			b := m.serviceFor(where+": "+ep.key, ep.host(), ep.port(), &p)
			if b == nil {
				continue
			}
			wantImg := map[string]string{"postgres": postgresImage, "redis": redisImage, "nats": natsImage}[ep.kind]
			bc := b.Spec.Template.Spec.Containers[0]
			if bc.Image != wantImg {
				p.add("%s: %s points at %s, whose image %q is not %s", where, ep.key, ep.host(), bc.Image, wantImg)
			}
			if ep.kind != "postgres" {
				continue
			}
			checkPostgresURL(where, ep, m.containerEnv(b.Kind+" "+b.Metadata.Name, bc, &p), &p)
			var sql strings.Builder
			for _, vm := range bc.VolumeMounts {
				if vm.MountPath != initdbDir {
					continue
				}
				for _, v := range b.Spec.Template.Spec.Volumes {
					if v.Name == vm.Name && v.ConfigMap != nil {
						if cm, ok := m.configMaps[v.ConfigMap.Name]; ok {
							for _, k := range sortedKeys(cm.Data) {
								sql.WriteString(cm.Data[k])
							}
						}
					}
				}
			}
			for _, table := range tablesOn(cfg, e, ep.host()) {
				if !creates(sql.String(), table) {
					p.add("%s %s: no init script in %s creates table %s, which the config watches", b.Kind, b.Metadata.Name, initdbDir, table)
				}
			}
		}
	}
	return p
}

func TestKubernetes(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			m, err := loadManifests(k8sDir(tp.name))
			if err != nil {
				t.Fatal(err)
			}
			checkK8s(tp, m).report(t)
		})
	}
}

// ---- the checks catch mistakes ----

// TestChecksCatchMistakes breaks the nats files one way at a time and
// expects the checks to say so.
func TestChecksCatchMistakes(t *testing.T) {
	tp := topologyNamed(t, "nats")
	load := func(t *testing.T) *manifests {
		t.Helper()
		m, err := loadManifests(k8sDir(tp.name))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	worker := func(m *manifests) *container { return &m.workloads["millrace-worker"].Spec.Template.Spec.Containers[0] }
	setEnv := func(c *container, name, value string) {
		for i := range c.Env {
			if c.Env[i].Name == name {
				c.Env[i].Value, c.Env[i].ValueFrom = &value, nil
				return
			}
		}
		c.Env = append(c.Env, envVar{Name: name, Value: &value})
	}
	k8sCases := []struct {
		name, want string
		breakIt    func(m *manifests)
	}{
		{"worker role", `args ["run" "-c" "/etc/millrace/millrace.toml" "--role" "all"]`, func(m *manifests) {
			worker(m).Args[4] = "all"
		}},
		{"no standby bridge", "millrace-capture: replicas: 1, want 2", func(m *manifests) {
			one := 1
			m.workloads["millrace-capture"].Spec.Replicas = &one
		}},
		{"readiness path", `readinessProbe path "/healthz", want "/readyz"`, func(m *manifests) {
			worker(m).ReadinessProbe.HTTPGet.Path = "/healthz"
		}},
		{"container port", "containerPort 9090 is not http.addr's port 8080", func(m *manifests) {
			worker(m).Ports[0].ContainerPort = 9090
		}},
		{"http addr", "listen on 0.0.0.0", func(m *manifests) {
			setEnv(worker(m), "MILLRACE_HTTP__ADDR", "127.0.0.1:8080")
		}},
		{"literal secret", "ORDERS_DB_URL, which must come from a Secret", func(m *manifests) {
			setEnv(worker(m), "ORDERS_DB_URL", "postgres://millrace:change-me@postgres:5432/shop")
		}},
		{"missing variable", "names ORDERS_DB_URL, which the environment does not provide", func(m *manifests) {
			c := worker(m)
			c.Env = slices.DeleteFunc(c.Env, func(v envVar) bool { return v.Name == "ORDERS_DB_URL" })
		}},
		{"config drift", "differs from topologies/nats.toml", func(m *manifests) {
			cm := m.configMaps["millrace-config"]
			cm.Data["millrace.toml"] = strings.Replace(cm.Data["millrace.toml"], `ack_wait = "30s"`, `ack_wait = "60s"`, 1)
		}},
		{"nats image", `image "nats:latest"`, func(m *manifests) {
			m.workloads["nats"].Spec.Template.Spec.Containers[0].Image = "nats:latest"
		}},
		{"nats host", `no Service named "nats-0"`, func(m *manifests) {
			setEnv(worker(m), "MILLRACE_NATS__URL", "nats://nats-0:4222")
		}},
		{"postgres password", "another password than the PostgreSQL container's", func(m *manifests) {
			m.secrets["postgres"]["POSTGRES_PASSWORD"] = "other"
		}},
		{"grace period", "grace period 10s is not longer than router.shutdown_timeout 10s", func(m *manifests) {
			ten := 10
			m.workloads["millrace-worker"].Spec.Template.Spec.TerminationGracePeriodSeconds = &ten
		}},
		{"ingest token not given", "names MILLRACE_INGEST_TOKEN, which the environment does not provide", func(m *manifests) {
			c := worker(m)
			c.Env = slices.DeleteFunc(c.Env, func(v envVar) bool { return v.Name == "MILLRACE_INGEST_TOKEN" })
		}},
		{"literal ingest token", "MILLRACE_INGEST_TOKEN, which must come from a Secret", func(m *manifests) {
			setEnv(worker(m), "MILLRACE_INGEST_TOKEN", "change-me-too")
		}},
		{"init script", "no init script in /docker-entrypoint-initdb.d creates table orders", func(m *manifests) {
			m.configMaps["postgres-initdb"].Data = map[string]string{"shop.sql": "CREATE TABLE customers (id int PRIMARY KEY);"}
		}},
	}
	for _, tc := range k8sCases {
		t.Run("k8s/"+tc.name, func(t *testing.T) {
			m := load(t)
			if p := checkK8s(tp, m); len(p) > 0 {
				t.Fatalf("the unbroken manifests already fail: %v", p)
			}
			tc.breakIt(m)
			p := checkK8s(tp, m)
			if !slices.ContainsFunc(p, func(s string) bool { return strings.Contains(s, tc.want) }) {
				t.Errorf("after breaking %s, problems = %q; want one containing %q", tc.name, p, tc.want)
			}
		})
	}

	composeCases := []struct {
		name, want string
		breakIt    func(f *composeFile)
	}{
		{"other config", "is mounted from", func(f *composeFile) {
			s := f.Services["worker"]
			s.Volumes = []string{"../../topologies/embedded.toml:" + configPath + ":ro"}
			f.Services["worker"] = s
		}},
		{"capture role", `command ["run" "-c" "/etc/millrace/millrace.toml" "--role" "observe"]`, func(f *composeFile) {
			s := f.Services["capture"]
			s.Command = wantArgs("observe")
			f.Services["capture"] = s
		}},
		{"redis image", `image "redis:latest"`, func(f *composeFile) {
			s := f.Services["redis"]
			s.Image = "redis:latest"
			f.Services["redis"] = s
		}},
		{"no depends_on", "does not depend on nats", func(f *composeFile) {
			s := f.Services["worker"]
			s.DependsOn = map[string]composeDependsOn{"postgres": {"service_healthy"}, "redis": {"service_healthy"}}
			f.Services["worker"] = s
		}},
		{"published port", `port "8080:9090" does not map`, func(f *composeFile) {
			s := f.Services["capture"]
			s.Ports = []string{"8080:9090"}
			f.Services["capture"] = s
		}},
		{"grace period", "grace period 10s is not longer", func(f *composeFile) {
			s := f.Services["worker"]
			s.StopGracePeriod = ""
			f.Services["worker"] = s
		}},
		{"literal secret", "MILLRACE_INGEST_TOKEN, which must come from an env_file", func(f *composeFile) {
			s := f.Services["worker"]
			s.Environment = maps.Clone(s.Environment)
			s.Environment["MILLRACE_INGEST_TOKEN"] = "change-me-too"
			f.Services["worker"] = s
		}},
		{"no env file", "names MILLRACE_INGEST_TOKEN, which the environment does not provide", func(f *composeFile) {
			s := f.Services["worker"]
			s.EnvFile = nil
			f.Services["worker"] = s
		}},
	}
	for _, tc := range composeCases {
		t.Run("compose/"+tc.name, func(t *testing.T) {
			path := composePath(tp.name)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := loadCompose(data)
			if err != nil {
				t.Fatal(err)
			}
			tc.breakIt(f)
			p := checkCompose(tp, f, filepath.Dir(path))
			if !slices.ContainsFunc(p, func(s string) bool { return strings.Contains(s, tc.want) }) {
				t.Errorf("after breaking %s, problems = %q; want one containing %q", tc.name, p, tc.want)
			}
		})
	}

	t.Run("k8s/misspelt field", func(t *testing.T) {
		dir := t.TempDir()
		doc := "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  template:\n    spec:\n" +
			"      containers:\n        - name: millrace\n          readinesProbe: {}\n"
		if err := os.WriteFile(filepath.Join(dir, "x.yaml"), []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadManifests(dir); err == nil || !strings.Contains(err.Error(), "readinesProbe") {
			t.Errorf("loadManifests of a misspelt field: err = %v, want one naming readinesProbe", err)
		}
	})

	t.Run("compose/misspelt key", func(t *testing.T) {
		if _, err := loadCompose([]byte("services:\n  millrace:\n    image: millrace:dev\n    comand: [run]\n")); err == nil {
			t.Error("a misspelt compose key decoded without error")
		}
	})
}

// ---- the Dockerfile and the guides ----

// TestOpenIngestIsCaught: each deployment's process, given its example
// config without [[http.ingest_tokens]], is found to listen beyond
// loopback with an ingest anyone can call; with http.ingest = false
// instead it passes.
func TestOpenIngestIsCaught(t *testing.T) {
	const block = "[[http.ingest_tokens]]\nname = \"producer\"\ntoken_env = \"MILLRACE_INGEST_TOKEN\"\n"
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			example, err := os.ReadFile(exampleConfig(tp.name))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(example, []byte(block)) {
				t.Fatalf("topologies/%s.toml has no ingest token block %q", tp.name, block)
			}
			f, err := loadCompose(must(os.ReadFile(composePath(tp.name))))
			if err != nil {
				t.Fatal(err)
			}
			var name string
			for name = range tp.compose {
				break
			}
			e := serviceEnv(f.Services[name], filepath.Dir(composePath(tp.name)), &problems{})
			role := tp.compose[name].role
			var p problems
			checkProcess(name, tp, bytes.Replace(example, []byte(block), nil, 1), e, role, time.Minute, false, &p)
			if !slices.ContainsFunc(p, func(s string) bool { return strings.Contains(s, "http.ingest_tokens: http.addr") }) {
				t.Errorf("without ingest tokens, problems = %q; want one about http.ingest_tokens", p)
			}
			p = nil
			off := bytes.Replace(example, []byte(block), nil, 1)
			off = bytes.Replace(off, []byte("[http]\n"), []byte("[http]\ningest = false\n"), 1)
			checkProcess(name, tp, off, e, role, time.Minute, false, &p)
			if len(p) > 0 {
				t.Errorf("with ingest off, problems = %q; want none", p)
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var froms, entrypoints, users []string
	copiesBinary := false
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			froms = append(froms, f[1])
		case "ENTRYPOINT":
			entrypoints = append(entrypoints, strings.TrimSpace(strings.TrimPrefix(line, f[0])))
		case "USER":
			users = append(users, f[1])
		case "COPY":
			copiesBinary = copiesBinary || f[len(f)-1] == binaryPath
		}
	}
	if len(froms) < 2 || froms[0] != "golang:1.26" {
		t.Errorf("FROM lines %q: want a golang:1.26 build stage, then a runtime stage", froms)
	}
	if !copiesBinary {
		t.Errorf("no COPY puts the binary at %s", binaryPath)
	}
	if want := `["` + binaryPath + `"]`; len(entrypoints) != 1 || entrypoints[0] != want {
		t.Errorf("ENTRYPOINT %q, want %s (the manifests give only args)", entrypoints, want)
	}
	if len(users) != 1 || !regexp.MustCompile(`^[1-9][0-9]*(:[0-9]+)?$`).MatchString(users[0]) {
		t.Errorf("USER %q: want one numeric non-root user, which runAsNonRoot can verify", users)
	}
	if !strings.Contains(string(data), configPath) {
		t.Errorf("the Dockerfile does not mention the config path %s", configPath)
	}
}

func TestGuides(t *testing.T) {
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			path := filepath.Join(root, "docs", "deployment", tp.guide)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			doc := string(data)
			for _, s := range []string{
				"```mermaid",
				"deploy/compose/" + tp.name + ".yml",
				"deploy/k8s/" + tp.name + "/",
				"topologies/" + tp.name + ".toml",
				"README",
				// Where the secrets come from, and the ingest credentials
				// a process listening beyond loopback needs.
				"deploy/compose/" + tp.name + ".env",
				"MILLRACE_INGEST_TOKEN",
				"security.md",
			} {
				if !strings.Contains(doc, s) {
					t.Errorf("%s does not mention %s", tp.guide, s)
				}
			}
			for _, img := range tp.backing {
				if !strings.Contains(doc, "`"+img+"`") {
					t.Errorf("%s does not name the image `%s`", tp.guide, img)
				}
			}
			for _, w := range tp.k8s {
				if !strings.Contains(doc, "--role "+w.role) {
					t.Errorf("%s does not mention --role %s", tp.guide, w.role)
				}
			}
		})
	}
	if _, err := os.Stat(filepath.Join(root, "docs", "deployment", "troubleshooting.md")); err != nil {
		t.Error(err)
	}
}
