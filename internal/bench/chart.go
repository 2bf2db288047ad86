package bench

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"strconv"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// The chart is drawn with the standard library's image packages and the
// fixed 7x13 bitmap face of golang.org/x/image: no plotting library, no
// font files.

const (
	chartW, chartH = 1200, 540
	panelW         = chartW / 2
	plotTop        = 64
	plotBottom     = 430
	charW          = 7 // advance of basicfont.Face7x13
)

var (
	colBackground = color.RGBA{0xff, 0xff, 0xff, 0xff}
	colText       = color.RGBA{0x22, 0x22, 0x22, 0xff}
	colMuted      = color.RGBA{0x77, 0x77, 0x77, 0xff}
	colGrid       = color.RGBA{0xe4, 0xe4, 0xe4, 0xff}
	colAxis       = color.RGBA{0x44, 0x44, 0x44, 0xff}
	colThroughput = color.RGBA{0x1f, 0x5f, 0xa8, 0xff}
	colLatency    = color.RGBA{0xd9, 0x66, 0x1f, 0xff}
	colCeiling    = color.RGBA{0xa8, 0xa8, 0xa8, 0xff}
)

// bars is one group of a panel: millrace's value and the ceiling's; a
// negative value is a run without a figure.
type bars struct {
	label             string
	millrace, ceiling float64
}

// Chart draws no-op throughput and steady-rate p99 latency per topology,
// each beside its ceiling, as a PNG.
func (r *Results) Chart() ([]byte, error) {
	img := image.NewRGBA(image.Rect(0, 0, chartW, chartH))
	draw.Draw(img, img.Bounds(), image.NewUniform(colBackground), image.Point{}, draw.Src)
	var thrBars, latBars []bars
	for _, t := range r.Topologies {
		tb := bars{label: t.Name, millrace: -1, ceiling: -1}
		lb := tb
		if f := figures(t, ScenarioNoop); f.ok() {
			tb.millrace = f.Throughput
		}
		if f := t.Ceiling.Saturation; f.ok() {
			tb.ceiling = f.Throughput
		}
		if f := figures(t, ScenarioSteadyNoop); f.ok() {
			lb.millrace = f.Latency.P99
		}
		if f := t.Ceiling.Steady; f.ok() {
			lb.ceiling = f.Latency.P99
		}
		thrBars, latBars = append(thrBars, tb), append(latBars, lb)
	}
	panel(img, 0, "No-op throughput, events/s (higher is better)", thrBars, colThroughput, short)
	panel(img, panelW, fmt.Sprintf("p99 latency at %s events/s, ms (lower is better)", num(float64(r.Settings.Rate))),
		latBars, colLatency, dec)

	// Legend and footer.
	y := plotBottom + 58
	x := 70
	for _, l := range []struct {
		c    color.Color
		text string
	}{{colThroughput, "millrace, throughput"}, {colLatency, "millrace, p99"}, {colCeiling, "ceiling: the client library alone"}} {
		fill(img, image.Rect(x, y-10, x+12, y+2), l.c)
		text(img, x+18, y, l.text, colText)
		x += 18 + len(l.text)*charW + 30
	}
	text(img, x, y, "n/a: topology not in this build or run failed", colMuted)
	foot := fmt.Sprintf("millrace-bench, %s UTC; %d cores, load %s; %s events per run, %d-byte data",
		r.Date.Format("2006-01-02 15:04"), r.Machine.Cores, load(r.Machine.LoadStart), num(float64(r.Settings.Events)), r.Settings.PayloadBytes)
	if r.Settings.Quick {
		foot += "; QUICK RUN, figures meaningless"
	}
	text(img, 70, y+28, foot, colMuted)

	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// panel draws a bar chart of groups in the half of img starting at x0.
func panel(img *image.RGBA, x0 int, title string, groups []bars, col color.Color, label func(float64) string) {
	left, right := x0+70, x0+panelW-20
	text(img, x0+(panelW-len(title)*charW)/2, 34, title, colText)
	top := 0.0
	for _, g := range groups {
		top = max(top, g.millrace, g.ceiling)
	}
	scale := niceMax(top)
	const ticks = 5
	for i := 0; i <= ticks; i++ {
		v := scale * float64(i) / ticks
		y := plotBottom - int(math.Round(float64(plotBottom-plotTop)*float64(i)/ticks))
		c := colGrid
		if i == 0 {
			c = colAxis
		}
		fill(img, image.Rect(left, y, right, y+1), c)
		s := label(v)
		text(img, left-8-len(s)*charW, y+4, s, colMuted)
	}
	fill(img, image.Rect(left, plotTop, left+1, plotBottom+1), colAxis)
	if len(groups) == 0 {
		return
	}
	gw := (right - left) / len(groups)
	bw := min(40, gw*3/10)
	for i, g := range groups {
		cx := left + gw*i + gw/2
		bar(img, cx-bw-3, bw, g.millrace, scale, col, label)
		bar(img, cx+3, bw, g.ceiling, scale, colCeiling, label)
		text(img, cx-len(g.label)*charW/2, plotBottom+20, g.label, colText)
	}
}

// bar draws one bar of value v at x, w wide, with its value on top.
func bar(img *image.RGBA, x, w int, v, scale float64, col color.Color, label func(float64) string) {
	s := "n/a"
	y := plotBottom
	if v >= 0 && scale > 0 {
		h := int(math.Round(float64(plotBottom-plotTop) * v / scale))
		if v > 0 {
			h = max(h, 1)
		}
		y = plotBottom - h
		fill(img, image.Rect(x, y, x+w, plotBottom), col)
		s = label(v)
	}
	text(img, x+w/2-len(s)*charW/2, y-5, s, colText)
}

// niceMax rounds v up to 1, 2, 2.5 or 5 times a power of ten.
func niceMax(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// short formats a count in at most five characters: 950, 3.4k, 57k, 1.2M.
func short(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', 1, 64) + "M"
	case v >= 1e4:
		return strconv.FormatFloat(v/1e3, 'f', 0, 64) + "k"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'f', 1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func fill(img *image.RGBA, r image.Rectangle, c color.Color) {
	draw.Draw(img, r, image.NewUniform(c), image.Point{}, draw.Src)
}

// text draws s with its baseline at y.
func text(img *image.RGBA, x, y int, s string, c color.Color) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}
