package bench

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// progress shows which run is going and how far it got: one line
// redrawn in place on a terminal, a log line every few seconds
// otherwise.
type progress struct {
	w     io.Writer
	tty   bool
	total int

	mu   sync.Mutex
	step int
}

// Periods of the progress line.
const (
	ttyEvery   = 250 * time.Millisecond
	plainEvery = 10 * time.Second
)

// start shows label's run until the returned func is called with the
// run's summary.
func (p *progress) start(label string, rec *recorder) func(summary string) {
	p.mu.Lock()
	p.step++
	step := p.step
	p.mu.Unlock()
	prefix := fmt.Sprintf("[%d/%d] ", step, p.total)
	every := plainEvery
	if p.tty {
		every = ttyEvery
	} else {
		fmt.Fprintf(p.w, "%s%s: %s events\n", prefix, label, num(float64(rec.n)))
	}
	line := func() string {
		d := rec.done.Load()
		rate := 0.0
		if s := rec.start.Load(); s > 0 {
			if el := time.Since(time.Unix(0, s)).Seconds(); el > 0 {
				rate = float64(d) / el
			}
		}
		return fmt.Sprintf("%s%s: %s %s/%s events, %s/s", prefix, label, meter(d, int64(rec.n), 20),
			num(float64(d)), num(float64(rec.n)), num(rate))
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if p.tty {
					fmt.Fprintf(p.w, "\r\x1b[K%s", line())
				} else {
					fmt.Fprintln(p.w, line())
				}
			}
		}
	})
	return func(summary string) {
		close(done)
		wg.Wait()
		if p.tty {
			fmt.Fprint(p.w, "\r\x1b[K")
		}
		fmt.Fprintf(p.w, "%s%s\n", prefix, summary)
	}
}

// meter draws done out of total in width cells.
func meter(done, total int64, width int) string {
	k := 0
	if total > 0 {
		k = int(done * int64(width) / total)
	}
	k = min(max(k, 0), width)
	return "[" + strings.Repeat("#", k) + strings.Repeat(".", width-k) + "]"
}

// num formats f rounded to an integer with thousands separators.
func num(f float64) string {
	s := strconv.FormatInt(int64(f+0.5), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// dec formats a small figure with a precision that suits its size.
func dec(f float64) string {
	switch {
	case f == 0:
		return "0"
	case f >= 100:
		return num(f)
	case f >= 10:
		return strconv.FormatFloat(f, 'f', 1, 64)
	case f >= 1:
		return strconv.FormatFloat(f, 'f', 2, 64)
	}
	return strconv.FormatFloat(f, 'f', 3, 64)
}
