package console_test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/millrace/millrace/internal/e2e"
)

func TestMain(m *testing.M) { e2e.Main(m) }

const wait = time.Minute

// chromium returns the path of the Chromium binary, failing the test
// when there is none: the browser test must not pass by not running.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("Chromium is not installed: run `bash test/services.sh` (it installs Debian's chromium package) or `apt-get install chromium`")
	return ""
}

// shooter saves full-page screenshots to the test's artifact directory
// and, when asked, to docs/console.
type shooter struct {
	t    *testing.T
	dirs []string
}

func newShooter(t *testing.T) *shooter {
	s := &shooter{t: t, dirs: []string{t.ArtifactDir()}}
	if os.Getenv("MILLRACE_UPDATE_SCREENSHOTS") == "1" {
		s.dirs = append(s.dirs, filepath.Join(e2e.ModuleRoot(), "docs", "console"))
	}
	return s
}

func (s *shooter) shot(name string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		png, err := chromedp.FullScreenshot(100)(ctx, t)
		if err != nil {
			return err
		}
		for _, dir := range s.dirs {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
				return err
			}
		}
		s.t.Logf("screenshot %s.png (%d bytes) in %s", name, len(png), strings.Join(s.dirs, ", "))
		return nil
	})
}

// TestConsoleInBrowser logs in with the admin token, sees the dead
// letter of a webhook that failed (the receiver answered 400), replays
// it from the entry's page once the receiver accepts, and sees it
// delivered; it screenshots every page on the way.
func TestConsoleInBrowser(t *testing.T) {
	exe := chromium(t)
	recv := e2e.NewReceiver(t)
	recv.Handle("hook", func(*e2e.Delivery) (int, time.Duration) { return http.StatusBadRequest, 0 })
	r := e2e.NewRig(t, "nats", e2e.Options{
		Receiver: recv,
		HTTP:     map[string]any{"console": true},
		Observers: map[string]e2e.Observer{
			"order_hook": {Retry: map[string]any{"max_attempts": 1}, Actions: []map[string]any{recv.Action("hook", nil)}},
		},
	})
	r.Start()

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1360, 900),
		chromedp.Flag("lang", "en-US"))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()
	// The first call starts the browser, with a context that has no
	// deadline (a deadline there would stop the browser); the steps run
	// with one.
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start Chromium (%s): %v", exe, err)
	}
	ctx, cancel := context.WithTimeout(bctx, 3*wait)
	defer cancel()
	s := newShooter(t)
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			loc, _ := chromedp.Run(bctx, chromedp.Location())
			body, _ := chromedp.Run(bctx, chromedp.Text(chromedp.CSS("body")))
			t.Fatalf("%s: %v (page %s: %.500s)", what, err, loc, body)
		}
	}
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return v
	}

	// Without a session the console answers 401 with a way to log in.
	do("open the console without a session", chromedp.Navigate(r.URL("/console/observers")))
	if got := text("main"); !strings.Contains(got, "needs the admin token") {
		t.Fatalf("the console without a session shows %q", got)
	}
	do("log in",
		chromedp.Navigate(r.URL("/console/login")),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		s.shot("login"),
		chromedp.SendKeys(chromedp.CSS("#token"), r.AdminToken),
		chromedp.Click(chromedp.CSS("#login")),
		chromedp.WaitVisible(chromedp.CSS("#observers")))

	// A change whose webhook fails (400, permanent) becomes a dead letter.
	if err := r.Insert(ctx, []int{1}, "new"); err != nil {
		t.Fatal(err)
	}
	dls := r.WaitDeadLetters(t, wait, "the failed webhook's dead letter", func(d []e2e.DeadLetter) bool { return len(d) == 1 })
	dl := dls[0]
	link := `a[href="/console/deadletters/` + dl.ID + `"]`
	do("see the dead letter",
		chromedp.Navigate(r.URL("/console/deadletters")),
		chromedp.WaitVisible(chromedp.CSS(link)))
	got := text("#deadletters")
	for _, want := range []string{"order_hook", "permanent", "400"} {
		if !strings.Contains(got, want) {
			t.Errorf("the dead letters table lacks %q: %s", want, got)
		}
	}
	do("screenshot the dead letters", s.shot("deadletters"))
	do("inspect it",
		chromedp.Click(chromedp.CSS(link)),
		chromedp.WaitVisible(chromedp.CSS("#last-error")),
		s.shot("deadletter"))
	if got := text("#payload"); !strings.Contains(got, dl.EventID) {
		t.Errorf("the entry's page shows the event %q; want its id %s", got, dl.EventID)
	}

	// The receiver accepts from now on; the replay from the UI delivers.
	recv.Handle("hook", func(*e2e.Delivery) (int, time.Duration) { return http.StatusNoContent, 0 })
	do("replay it",
		chromedp.Click(chromedp.CSS("#replay-one")),
		chromedp.WaitVisible(chromedp.CSS("#result")))
	if got := text("#result"); !strings.Contains(got, "Replayed 1 of 1") {
		t.Fatalf("after the replay the console says %q", got)
	}
	do("screenshot the replay", s.shot("replayed"))
	recv.Wait(t, wait, "the replayed event delivered", func() bool { return recv.Count("hook") == 1 })
	if got := recv.Delivered("hook")[0].Event; got == nil || got.ID != dl.EventID {
		t.Errorf("the receiver got %+v; want event %s", got, dl.EventID)
	}
	r.WaitDeadLetters(t, wait, "the dead letter gone after its replay", func(d []e2e.DeadLetter) bool { return len(d) == 0 })

	// The other pages, with what this run did on them.
	do("observers",
		chromedp.Navigate(r.URL("/console/observers")),
		chromedp.WaitVisible(chromedp.CSS("#observers")),
		// Let one live refresh replace the table (console.js).
		chromedp.Sleep(2500*time.Millisecond),
		s.shot("observers"))
	if got := text("#observers"); !strings.Contains(got, "order_hook") || !strings.Contains(got, "p99") {
		t.Errorf("the observers page shows %q", got)
	}
	do("recent deliveries",
		chromedp.Navigate(r.URL("/console/deliveries")),
		chromedp.WaitVisible(chromedp.CSS("table.deliveries")),
		s.shot("deliveries"))
	if got := text("main"); !strings.Contains(got, "dead_lettered") || !strings.Contains(got, "succeeded") {
		t.Errorf("recent deliveries lack the failed and the replayed delivery: %s", got)
	}
	do("config",
		chromedp.Navigate(r.URL("/console/config")),
		chromedp.WaitVisible(chromedp.CSS("#config")),
		s.shot("config"))
	if got := text("#config"); !strings.Contains(got, "topology = 'nats'") || strings.Contains(got, r.AdminToken) || strings.Contains(got, recv.Secret()) {
		t.Errorf("the config page: want the topology and no secret: %s", got)
	}
	do("bus health",
		chromedp.Navigate(r.URL("/console/bus")),
		chromedp.WaitVisible(chromedp.CSS("#busmetrics")),
		s.shot("bus"))
	if got := text("#ready"); !strings.Contains(got, "ready") || strings.Contains(got, "not ready") {
		t.Errorf("bus health says %q", got)
	}
	// The JetStream consumers (one per partition) with their lag.
	if got := text("#lag"); strings.Contains(got, "No consumer reported") || !strings.Contains(got, "Not delivered yet") {
		t.Errorf("bus health consumers: %s", got)
	}
}
