//! [`skip`]: a test that cannot run here says so where people look.

use std::io::Write as _;

/// The environment variable naming a file that every skip is appended to (one line each), so a
/// test command can list them at the end; `scripts/test-all.sh` sets it.
pub const SKIP_LOG: &str = "LB_TEST_SKIP_LOG";

/// Reports that the calling test skips itself, and why; the test then returns.
///
/// The test harness captures what `println!` prints from a passing test, so a skip printed that way
/// is never seen and the test just counts as passed. This writes `SKIPPED <binary>::<test>: <reason>` to the
/// process's standard output directly (the harness only captures the `print!` macros), and
/// appends the same line to the file named by [`SKIP_LOG`], when set, for the summary at the end.
/// The test's name is its thread's, which the harness sets.
pub fn skip(reason: &str) {
    let test = std::thread::current().name().unwrap_or("<unnamed test>").to_string();
    let line = format!("SKIPPED {}::{test}: {reason}\n", binary_name());
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os(SKIP_LOG) {
        // One `write` per line with O_APPEND: test processes running at once do not interleave.
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

/// The test binary's name without cargo's hash (`consul-1a2b3c4d` → `consul`).
fn binary_name() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe.as_ref().and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
        _ => stem,
    }
}
