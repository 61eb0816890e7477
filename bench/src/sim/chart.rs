//! Hand-written SVG line charts (several series over a shared x axis), in the style of the bar
//! charts of `svg.rs`: a title, axes with a few ticks, a legend.

use std::fmt::Write as _;

/// One line: a name and its `(x, y)` points.
#[derive(Clone, Debug)]
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) points: Vec<(f64, f64)>,
}

/// A vertical marker at `x` with a label (an event: "zone fails").
#[derive(Clone, Debug)]
pub(crate) struct Marker {
    pub(crate) x: f64,
    pub(crate) label: String,
}

/// A line chart as a standalone SVG document. `y_min` fixes the bottom of the y axis (the top
/// is the largest value, rounded up).
pub(crate) fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series], markers: &[Marker], y_min: f64) -> String {
    const W: f64 = 780.0;
    const H: f64 = 340.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 190.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 48.0;
    let palette = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1"];
    let finite = |v: f64| v.is_finite();
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).filter(|v| finite(*v));
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let (x0, x1) = if x0.is_finite() && x1 > x0 { (x0, x1) } else { (0.0, 1.0) };
    let y_top = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|v| finite(*v)).fold(y_min, f64::max);
    let y1 = nice_ceiling(if y_top > y_min { y_top } else { y_min + 1.0 }, y_min);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - (y.clamp(y_min, y1) - y_min) / (y1 - y_min) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="8" y="20" font-size="15" font-weight="bold">{}</text>"#, escape(title));
    // Axes and ticks.
    let (bx, by) = (LEFT, H - BOTTOM);
    let _ = writeln!(s, r##"<line x1="{bx}" y1="{TOP}" x2="{bx}" y2="{by}" stroke="#333"/>"##);
    let _ = writeln!(s, r##"<line x1="{bx}" y1="{by}" x2="{}" y2="{by}" stroke="#333"/>"##, W - RIGHT);
    for i in 0..=5 {
        let y = y_min + (y1 - y_min) * f64::from(i) / 5.0;
        let yy = py(y);
        let _ = writeln!(s, r##"<line x1="{bx}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/>"##, W - RIGHT);
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, bx - 6.0, yy + 4.0, tick(y));
    }
    for i in 0..=6 {
        let x = x0 + (x1 - x0) * f64::from(i) / 6.0;
        let _ = writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#, px(x), by + 16.0, tick(x));
    }
    let _ = writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#, (LEFT + W - RIGHT) / 2.0, H - 10.0, escape(x_label));
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.1}" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
        (TOP + by) / 2.0,
        (TOP + by) / 2.0,
        escape(y_label)
    );
    for m in markers {
        let mx = px(m.x);
        let _ = writeln!(s, r##"<line x1="{mx:.1}" y1="{TOP}" x2="{mx:.1}" y2="{by}" stroke="#999" stroke-dasharray="4 3"/>"##);
        let _ = writeln!(s, r##"<text x="{:.1}" y="{}" fill="#555">{}</text>"##, mx + 3.0, TOP + 12.0, escape(&m.label));
    }
    for (i, ser) in series.iter().enumerate() {
        let colour = palette[i % palette.len()];
        let pts: Vec<String> = ser
            .points
            .iter()
            .filter(|p| finite(p.0) && finite(p.1))
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if !pts.is_empty() {
            let _ = writeln!(s, r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#, pts.join(" "));
        }
        let ly = TOP + 18.0 * i as f64;
        let lx = W - RIGHT + 12.0;
        let _ = writeln!(s, r#"<rect x="{lx}" y="{:.1}" width="14" height="4" fill="{colour}"/>"#, ly + 4.0);
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}">{}</text>"#, lx + 20.0, ly + 10.0, escape(&ser.name));
    }
    s.push_str("</svg>\n");
    s
}

/// A round number at or above `v`, for the top of the axis.
fn nice_ceiling(v: f64, base: f64) -> f64 {
    let span = (v - base).max(1e-9);
    let step = 10f64.powf(span.log10().floor()) / 2.0;
    base + (span / step).ceil() * step
}

fn tick(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series_and_marker() {
        let series = vec![
            Series { name: "a".into(), points: vec![(0.0, 1.0), (1.0, 2.0)] },
            Series { name: "b & c".into(), points: vec![(0.0, 0.5), (1.0, f64::NAN)] },
        ];
        let svg = line_chart("t", "x", "y", &series, &[Marker { x: 0.5, label: "event".into() }], 0.0);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("b &amp; c") && svg.contains("event"));
        assert!(nice_ceiling(1.37, 0.0) >= 1.37);
    }
}
