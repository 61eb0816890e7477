//! Hand-written SVG bar charts: a title, one horizontal bar per row, the value printed at its end.
//!
//! A charting crate (plotters) would pull in font and image dependencies for what is a few
//! `<rect>` and `<text>` elements per chart.

use std::fmt::Write as _;

/// One bar.
#[derive(Clone, Debug)]
pub(crate) struct Bar {
    /// The row label.
    pub(crate) label: String,
    /// The value (bars scale to the largest value of the chart).
    pub(crate) value: f64,
    /// The text printed after the bar (e.g. `12 300 calls/s`).
    pub(crate) text: String,
}

/// A horizontal bar chart as a standalone SVG document.
pub(crate) fn bar_chart(title: &str, bars: &[Bar]) -> String {
    const LABEL_W: f64 = 260.0;
    const BAR_W: f64 = 380.0;
    const ROW_H: f64 = 26.0;
    const TOP: f64 = 34.0;
    let width = LABEL_W + BAR_W + 140.0;
    let height = TOP + ROW_H * bars.len() as f64 + 10.0;
    let max = bars.iter().map(|b| b.value).fold(0.0_f64, f64::max);
    let palette = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="8" y="20" font-size="15" font-weight="bold">{}</text>"#, escape(title));
    // Bars labelled `<contender>, <detail>` share their contender's colour; others get one each.
    let mut groups: Vec<&str> = Vec::new();
    for (i, b) in bars.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let colour = match b.label.split_once(", ") {
            Some((group, _)) => match groups.iter().position(|g| *g == group) {
                Some(k) => k,
                None => {
                    groups.push(group);
                    groups.len() - 1
                }
            },
            None => i,
        };
        let w = if max > 0.0 && b.value.is_finite() { (b.value / max * BAR_W).max(1.0) } else { 1.0 };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LABEL_W - 8.0,
            y + 15.0,
            escape(&b.label)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{LABEL_W}" y="{}" width="{w:.1}" height="{}" fill="{}"/>"#,
            y + 3.0,
            ROW_H - 8.0,
            palette[colour % palette.len()]
        );
        let _ = writeln!(s, r#"<text x="{:.1}" y="{}">{}</text>"#, LABEL_W + w + 6.0, y + 15.0, escape(&b.text));
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
