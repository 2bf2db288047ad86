package deploy_test

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// natsConfigPath is where the deployment files mount the NATS servers'
// config file.
const natsConfigPath = "/etc/nats/nats-server.conf"

// Every NATS server the deployment files start syncs each JetStream
// write to disk before it acknowledges it (sync_interval: always): its
// command line, with the config file it names (a compose bind mount, or
// the ConfigMap mounted in the pod), is parsed as nats-server parses it
// at start (server.ConfigureOptions), and the options it yields must say
// SyncAlways with JetStream on.
func TestNATSServersSyncEveryWrite(t *testing.T) {
	servers := 0
	for _, tp := range topologies {
		path := composePath(tp.name)
		f := readCompose(t, tp.name)
		for name, s := range f.Services {
			if len(s.Command) == 0 || s.Command[0] != "nats-server" {
				continue
			}
			servers++
			where := filepath.Base(path) + " service " + name
			host := ""
			for _, v := range s.Volumes {
				if src, dst, ok := strings.Cut(strings.TrimSuffix(v, ":ro"), ":"); ok && dst == natsConfigPath {
					host = filepath.Join(filepath.Dir(path), src)
				}
			}
			if host == "" {
				t.Errorf("%s: mounts nothing at %s", where, natsConfigPath)
				continue
			}
			checkNATSSync(t, where, s.Command, host)
		}

		m, err := loadManifests(filepath.Join(root, "deploy", "k8s", tp.name))
		if err != nil {
			t.Fatal(err)
		}
		for name, w := range m.workloads {
			for _, c := range w.Spec.Template.Spec.Containers {
				args := append(slices.Clone(c.Command), c.Args...)
				if len(args) == 0 || args[0] != "nats-server" {
					continue
				}
				servers++
				where := "k8s/" + tp.name + " " + w.Kind + " " + name
				host := ""
				for _, vm := range c.VolumeMounts {
					if vm.MountPath != filepath.Dir(natsConfigPath) {
						continue
					}
					for _, vol := range w.Spec.Template.Spec.Volumes {
						if vol.Name != vm.Name || vol.ConfigMap == nil || m.configMaps[vol.ConfigMap.Name] == nil {
							continue
						}
						text, ok := m.configMaps[vol.ConfigMap.Name].Data[filepath.Base(natsConfigPath)]
						if !ok {
							continue
						}
						host = filepath.Join(t.TempDir(), "nats-server.conf")
						if err := os.WriteFile(host, []byte(text), 0o600); err != nil {
							t.Fatal(err)
						}
					}
				}
				if host == "" {
					t.Errorf("%s: no ConfigMap with %s mounted at %s", where, filepath.Base(natsConfigPath), filepath.Dir(natsConfigPath))
					continue
				}
				checkNATSSync(t, where, args, host)
			}
		}
	}
	// postgres and redis run none; nats has three in compose and a
	// StatefulSet in k8s, multidb one of each.
	if servers != 6 {
		t.Errorf("found %d NATS servers in the deployment files; want 6", servers)
	}
}

// checkNATSSync parses a nats-server command line as the server does,
// with its config file read from host instead of natsConfigPath.
func checkNATSSync(t *testing.T, where string, command []string, host string) {
	t.Helper()
	args := slices.Clone(command[1:])
	i := slices.Index(args, "--config")
	if i < 0 || i+1 >= len(args) || args[i+1] != natsConfigPath {
		t.Errorf("%s: the command %q does not name --config %s", where, command, natsConfigPath)
		return
	}
	args[i+1] = host
	fs := flag.NewFlagSet("nats-server", flag.ContinueOnError)
	noop := func() {}
	opts, err := server.ConfigureOptions(fs, args, noop, noop, noop)
	if err != nil {
		t.Errorf("%s: nats-server would not start: %v", where, err)
		return
	}
	if !opts.JetStream || !opts.SyncAlways {
		t.Errorf("%s: JetStream %v, sync always %v (sync interval %s); want JetStream syncing every write before its ack",
			where, opts.JetStream, opts.SyncAlways, opts.SyncInterval)
	}
}
