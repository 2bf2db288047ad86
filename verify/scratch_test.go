package verify

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/knadh/koanf/parsers/toml/v2"

	"github.com/millrace/millrace/config"
)

// TestScratchEmbedded derives the scratch config of an embedded config
// with an observer and ingest tokens of its own (no outside service is
// needed): the user's observers and tokens are gone, the one observer
// posts to the receiver, the data dir is in the scratch dir, and Remove
// removes that dir.
func TestScratchEmbedded(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "embedded.toml")
	src := `topology = "embedded"
[http]
addr = "0.0.0.0:8080"
[[http.ingest_tokens]]
name = "shop"
token_env = "SHOP_TOKEN"
[observers.mine]
entity = "Order"
[[observers.mine.actions]]
type = "log"
message = "x"
`
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := newScratch(context.Background(), path, cfg, "http://127.0.0.1:1/hook", "whsec_x", Options{Outage: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := toml.Parser().Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	obs, _ := tree["observers"].(map[string]any)
	if _, ok := obs["mine"]; ok || obs["verify"] == nil || len(obs) != 1 {
		t.Errorf("observers = %v, want verify's alone", obs)
	}
	if !strings.Contains(string(raw), "http://127.0.0.1:1/hook") {
		t.Errorf("the scratch config does not post to the receiver:\n%s", raw)
	}
	if h, _ := tree["http"].(map[string]any); h["ingest_tokens"] != nil {
		t.Errorf("the user's ingest tokens are still there: %v", h)
	}
	if !s.Ingest || s.Workers != 1 || s.DedupProxy != nil || s.NoDedupCut == "" {
		t.Errorf("embedded without sources: ingest %v, workers %d, dedup cut %q", s.Ingest, s.Workers, s.NoDedupCut)
	}
	env := strings.Join(s.Env, "\n")
	for _, want := range []string{"MILLRACE_EMBEDDED__DATA_DIR=" + filepath.Join(s.Dir, "embedded"), "MILLRACE_HTTP__ADDR=127.0.0.1:0", secretEnv + "=whsec_x"} {
		if !strings.Contains(env, want) {
			t.Errorf("the workers' environment lacks %s", want)
		}
	}
	if err := s.Remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the scratch dir %s is still there (%v)", s.Dir, err)
	}
}

// TestScratchUnknownTopology: a topology verify does not know is a
// config error on the topology key.
func TestScratchUnknownTopology(t *testing.T) {
	_, err := newScratch(context.Background(), "x.toml", &config.Config{Topology: "custom"}, "", "", Options{})
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Key != "topology" {
		t.Fatalf("err = %v, want a config error on topology", err)
	}
}
