package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// A small hand-drawn bar chart: three panels side by side (throughput, proxy
// CPU per request, balance), medians of this run.

var (
	colBG     = color.RGBA{255, 255, 255, 255}
	colAxis   = color.RGBA{60, 60, 60, 255}
	colGrid   = color.RGBA{225, 225, 225, 255}
	colText   = color.RGBA{20, 20, 20, 255}
	colTarget = color.RGBA{200, 30, 30, 255}
	palette   = []color.RGBA{{66, 133, 244, 255}, {251, 188, 4, 255}, {52, 168, 83, 255}, {171, 71, 188, 255}}
)

type series struct {
	name   string
	values []float64 // one per group; NaN = no bar
}

type panel struct {
	title   string
	groups  []string
	series  []series
	format  string    // value label format
	refs    []float64 // horizontal reference lines (targets)
	refName string
	yMin    float64
}

func (r *report) chart(path string) error {
	c := r.cfg
	body := c.bodies[0]
	val := func(phase, sys string, bd int, get func(*sample) float64) float64 {
		if s := r.median(phase, sys, bd); s != nil {
			return get(s)
		}
		return math.NaN()
	}
	rps := func(s *sample) float64 { return s.RPS }
	cpu := func(s *sample) float64 { return s.CPUPer1k }

	tp := panel{title: "Throughput, req/s (median; load core saturated)", groups: c.systems, format: "%.0f"}
	cp := panel{title: "Proxy CPU-seconds per 1000 requests (lower is better)", format: "%.3f"}
	for _, sys := range c.systems {
		if sys != sysDirect {
			cp.groups = append(cp.groups, sys)
		}
	}
	addSeries := func(p *panel, name, phase string, bd int, get func(*sample) float64) {
		s := series{name: name}
		any := false
		for _, sys := range p.groups {
			v := val(phase, sys, bd, get)
			any = any || !math.IsNaN(v)
			s.values = append(s.values, v)
		}
		if any {
			p.series = append(p.series, s)
		}
	}
	if c.phases["main"] {
		for _, bd := range c.bodies {
			addSeries(&tp, fmt.Sprintf("decode, %d samples", bd), "main", bd, rps)
			addSeries(&cp, fmt.Sprintf("decode, %d samples", bd), "main", bd, cpu)
		}
	}
	if c.phases["capacity"] {
		for _, bd := range c.capacityBodies {
			addSeries(&tp, fmt.Sprintf("count-only, %d", bd), "capacity", bd, rps)
			addSeries(&cp, fmt.Sprintf("count-only, %d", bd), "capacity", bd, cpu)
		}
	}
	bp := panel{title: fmt.Sprintf("Balance: max/mean, %d clients -> %d stand-ins", c.balanceConns, c.standins),
		groups: balanceSystems(c.systems), format: "%.3f", refs: []float64{1.02}, refName: "target 1.02", yMin: 0}
	if c.phases["balance"] {
		addSeries(&bp, "max/mean requests per stand-in", "balance", body, func(s *sample) float64 { return s.MaxOverMean })
	}

	const w, h, pw = 1560, 560, 520
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.NewUniform(colBG), image.Point{}, draw.Src)
	for i, p := range []panel{tp, cp, bp} {
		drawPanel(img, image.Rect(i*pw, 0, (i+1)*pw, h), p)
	}
	text(img, 8, h-6, colAxis, fmt.Sprintf("metrics_gateway bench %s - %s - proxy on 1 core, wrk + stand-ins on the other",
		r.Started.UTC().Format("2006-01-02"), r.Machine.CPU))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func drawPanel(img *image.RGBA, area image.Rectangle, p panel) {
	const left, right, top, bottom = 62, 14, 64, 70
	plot := image.Rect(area.Min.X+left, area.Min.Y+top, area.Max.X-right, area.Max.Y-bottom)
	text(img, area.Min.X+left, area.Min.Y+18, colText, p.title)

	maxV := 0.0
	for _, s := range p.series {
		for _, v := range s.values {
			if !math.IsNaN(v) {
				maxV = math.Max(maxV, v)
			}
		}
	}
	for _, r := range p.refs {
		maxV = math.Max(maxV, r)
	}
	if maxV == 0 {
		text(img, plot.Min.X+10, plot.Min.Y+20, colText, "no data")
		return
	}
	step := niceStep(maxV * 1.15 / 5)
	top_ := math.Ceil(maxV*1.15/step) * step
	y := func(v float64) int {
		return plot.Max.Y - int(math.Round((v-p.yMin)/(top_-p.yMin)*float64(plot.Dy())))
	}
	for v := p.yMin; v <= top_+step/2; v += step {
		yy := y(v)
		hline(img, plot.Min.X, plot.Max.X, yy, colGrid)
		label := trimFloat(v, step)
		text(img, plot.Min.X-6-7*len(label), yy+4, colAxis, label)
	}
	vline(img, plot.Min.X, plot.Min.Y, plot.Max.Y, colAxis)
	hline(img, plot.Min.X, plot.Max.X, plot.Max.Y, colAxis)

	// Legend.
	lx := area.Min.X + left
	for i, s := range p.series {
		fill(img, image.Rect(lx, area.Min.Y+30, lx+10, area.Min.Y+40), palette[i%len(palette)])
		text(img, lx+14, area.Min.Y+40, colText, s.name)
		lx += 14 + 7*len(s.name) + 12
	}
	if p.refName != "" {
		for x := lx; x < lx+16; x += 8 {
			hline(img, x, x+5, area.Min.Y+35, colTarget)
		}
		text(img, lx+20, area.Min.Y+40, colTarget, p.refName)
	}

	n := len(p.groups)
	gw := float64(plot.Dx()) / float64(n)
	ns := max(len(p.series), 1)
	bw := int(gw * 0.8 / float64(ns))
	// Bars first, then their labels, so no bar paints over a label.
	for _, labels := range []bool{false, true} {
		for gi, g := range p.groups {
			gx := plot.Min.X + int(float64(gi)*gw+gw*0.1)
			for si, s := range p.series {
				v := s.values[gi]
				if math.IsNaN(v) {
					continue
				}
				x0 := gx + si*bw
				if !labels {
					fill(img, image.Rect(x0, y(v), x0+bw-2, plot.Max.Y), palette[si%len(palette)])
					continue
				}
				label := fmt.Sprintf(p.format, v)
				lx, ly := x0+(bw-2-7*len(label))/2, y(v)-4
				if ns > 1 && len(label)*7 > bw-2 { // too wide for its bar: one row per series
					ly -= 12 * si
				}
				text(img, lx, ly, colText, label)
			}
			if labels {
				cx := plot.Min.X + int(float64(gi)*gw+gw/2)
				text(img, cx-7*len(g)/2, plot.Max.Y+18, colText, g)
			}
		}
	}
	for _, r := range p.refs {
		yy := y(r)
		for x := plot.Min.X; x < plot.Max.X; x += 8 {
			hline(img, x, min(x+5, plot.Max.X), yy, colTarget)
		}
	}
}

func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if raw <= m*mag {
			return m * mag
		}
	}
	return 10 * mag
}

func trimFloat(v, step float64) string {
	switch {
	case step >= 1:
		return fmt.Sprintf("%.0f", v)
	case step >= 0.1:
		return fmt.Sprintf("%.1f", v)
	case step >= 0.01:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func text(img *image.RGBA, x, y int, c color.Color, s string) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func fill(img *image.RGBA, r image.Rectangle, c color.Color) {
	draw.Draw(img, r, image.NewUniform(c), image.Point{}, draw.Src)
}

func hline(img *image.RGBA, x0, x1, y int, c color.Color) {
	fill(img, image.Rect(x0, y, x1, y+1), c)
}

func vline(img *image.RGBA, x, y0, y1 int, c color.Color) {
	fill(img, image.Rect(x, y0, x+1, y1), c)
}
