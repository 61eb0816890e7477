//! The quickstart's terminal output: per-backend share bars and a side-by-side summary.
//!
//! Plain text that reads well in an 80-column terminal and in a CI log; colour only when stdout is a
//! terminal and `NO_COLOR` is unset (<https://no-color.org>).

use std::fmt::Write as _;
use std::io::IsTerminal;

use crate::load::Report;

/// Whether to emit ANSI colour codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    color: bool,
}

impl Style {
    /// Colour when stdout is a terminal and `NO_COLOR` is not set.
    pub fn detect() -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            color: !no_color && std::io::stdout().is_terminal(),
        }
    }

    /// Never colour.
    pub fn plain() -> Style {
        Style { color: false }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }
}

/// One backend as the tables show it.
#[derive(Clone, Debug)]
pub struct BackendInfo {
    /// A short label (`a1`).
    pub label: String,
    /// The address replies name (`127.0.0.1:40001`).
    pub addr: String,
    /// Its zone.
    pub zone: String,
    /// Its artificial delay per call, in milliseconds (0 for a normal backend).
    pub delay_ms: u64,
}

/// The width of a full share bar, in terminal columns.
pub const BAR_WIDTH: usize = 36;

/// A bar of exactly `width` columns, filled to `share` (clamped to `0..=1`) with eighth-block
/// precision, so 1% and 0% look different.
pub fn bar(share: f64, width: usize) -> String {
    const PARTIAL: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = (share.clamp(0.0, 1.0) * (width * 8) as f64).round() as usize;
    let mut s = String::with_capacity(width * 3);
    let full = eighths / 8;
    s.extend(std::iter::repeat_n('█', full));
    if full < width {
        let rest = eighths % 8;
        // Show a sliver for any non-zero share, however small, so "almost nothing" ≠ "nothing".
        let rest = if full == 0 && rest == 0 && share > 0.0 { 1 } else { rest };
        s.push(PARTIAL[rest]);
        s.extend(std::iter::repeat_n(' ', width - full - 1));
    }
    s
}

/// Formats milliseconds with about three significant digits.
pub fn ms(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0} ms")
    } else if x >= 10.0 {
        format!("{x:.1} ms")
    } else {
        format!("{x:.2} ms")
    }
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// A section title.
pub fn render_title(text: &str, style: Style) -> String {
    style.bold(text)
}

/// The backend legend printed before the scenarios.
pub fn render_backends(backends: &[BackendInfo], style: Style) -> String {
    let mut out = String::new();
    for b in backends {
        let note = if b.delay_ms > 0 {
            format!("  slow: +{} ms per call", b.delay_ms)
        } else {
            String::new()
        };
        // Pad before painting: escape codes would otherwise count towards the width.
        let label = style.bold(&format!("{:<4}", b.label));
        let line = format!("  {label}{:<22}{:<8}{}", b.addr, b.zone, note);
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// One scenario: a title, a bar per backend, latencies and a one-line finding.
pub fn render_scenario(
    index: usize,
    title: &str,
    backends: &[BackendInfo],
    run: &Run<'_>,
    finding: &str,
    style: Style,
) -> String {
    let report = run.report;
    let mut out = String::new();
    let _ = writeln!(out, "{}", style.bold(&format!("{index}. {title}")));
    for b in backends {
        let share = report.share(&b.addr);
        let count = report.per_backend.get(&b.addr).copied().unwrap_or(0);
        let color = if b.delay_ms > 0 { "33" } else { "32" };
        let _ = writeln!(
            out,
            "   {:<4}{:<8}{}  {:>6}  {:>5}",
            b.label,
            b.zone,
            style.paint(color, &bar(share, BAR_WIDTH)),
            percent(share),
            count
        );
    }
    let errors = if report.errors > 0 {
        format!(", {} failed", report.errors)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "   p50 {}   p99 {}   {:.0} calls/s   {}",
        ms(report.p50_ms),
        ms(report.p99_ms),
        run.rate(),
        style.dim(&format!("({} calls in {:.2} s{errors})", report.requests, run.elapsed.as_secs_f64())),
    );
    for (i, line) in wrap(finding, FINDING_WIDTH).iter().enumerate() {
        let arrow = if i == 0 { style.paint("36", "→") } else { " ".to_string() };
        let _ = writeln!(out, "   {arrow} {line}");
    }
    out
}

/// The width findings are wrapped to, so that a scenario fits in a 100-column terminal.
const FINDING_WIDTH: usize = 92;

/// Greedy word wrap.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// One scenario's result: the report and how long the run took.
#[derive(Clone, Copy, Debug)]
pub struct Run<'a> {
    /// Where the calls went, and their latencies.
    pub report: &'a Report,
    /// Wall-clock time of the whole run.
    pub elapsed: std::time::Duration,
}

impl Run<'_> {
    /// Calls per second over the run.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.report.requests as f64 / secs
        } else {
            0.0
        }
    }
}

/// The side-by-side summary: one row per scenario, one column per backend.
pub fn render_summary(backends: &[BackendInfo], rows: &[(&str, Run<'_>)], style: Style) -> String {
    let name_width = rows.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0).max(8) + 2;
    let mut header = format!("  {:<name_width$}", "");
    for b in backends {
        let label = if b.delay_ms > 0 { format!("{} slow", b.label) } else { b.label.clone() };
        let _ = write!(header, "{label:>9}");
    }
    let _ = write!(header, "{:>10}{:>10}{:>9}", "p50", "p99", "calls/s");
    let mut out = String::new();
    let _ = writeln!(out, "{}", style.bold(header.trim_end()));
    for (name, run) in rows {
        let report = run.report;
        let mut line = format!("  {name:<name_width$}");
        for b in backends {
            let _ = write!(line, "{:>9}", format!("{:.0}%", report.share(&b.addr) * 100.0));
        }
        let _ = write!(line, "{:>10}{:>10}{:>9.0}", ms(report.p50_ms), ms(report.p99_ms), run.rate());
        let _ = writeln!(out, "{line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_have_a_fixed_width_and_show_tiny_shares() {
        for share in [0.0, 0.004, 0.25, 0.5, 0.999, 1.0, 2.0, -1.0] {
            assert_eq!(bar(share, 10).chars().count(), 10, "share {share}");
        }
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.0, 4), "    ");
        assert_eq!(bar(0.5, 4), "██  ");
        assert_ne!(bar(0.001, 4), bar(0.0, 4), "a tiny share is still visible");
    }

    #[test]
    fn findings_wrap_on_words() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(wrap("averylongword x", 4), vec!["averylongword", "x"]);
        assert!(wrap("", 10).is_empty());
    }

    #[test]
    fn milliseconds_keep_three_digits() {
        assert_eq!(ms(0.6123), "0.61 ms");
        assert_eq!(ms(26.14), "26.1 ms");
        assert_eq!(ms(250.4), "250 ms");
    }
}
