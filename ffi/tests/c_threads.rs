//! The C ABI's threading contract from C (`tests/c/threads.c`): a pick reported on another thread,
//! two threads reporting one token at once, balancers created and freed beside picks on another;
//! run natively and under valgrind's helgrind.

mod support;

use std::process::Command;
use std::sync::OnceLock;

use support::{build_c, static_target, Backend};

fn program() -> &'static std::path::Path {
    static BIN: OnceLock<std::path::PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_c("tests/c/threads.c"))
}

fn checks(out: &std::process::Output) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "threads.c failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().filter_map(|l| l.strip_prefix("ok ")).map(|l| l.split(' ').next().unwrap_or("").to_string()).collect()
}

const ALL: [&str; 3] = ["report_on_another_thread", "two_threads_report_one_token", "create_and_free_beside_picks"];

#[test]
fn the_threading_contract_holds_from_c() {
    let backends = [Backend::start(false), Backend::start(false)];
    let refs: Vec<&Backend> = backends.iter().collect();
    let out = Command::new(program()).args([&static_target(&refs), "200"]).output().expect("run threads.c");
    assert_eq!(checks(&out), ALL);
}

/// Under helgrind, with the library's own internals suppressed (tests/c/helgrind.supp says why):
/// no race in how the C program shares picks, tokens and balancers between its threads.
#[test]
fn the_threading_contract_is_race_free_under_helgrind() {
    let backends = [Backend::start(false), Backend::start(false)];
    let refs: Vec<&Backend> = backends.iter().collect();
    let supp = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/helgrind.supp");
    let out = Command::new("valgrind")
        .args(["--tool=helgrind", "--error-exitcode=1"])
        .arg(format!("--suppressions={}", supp.display()))
        .arg(program())
        .args([&static_target(&refs), "5"])
        .output()
        .expect("run valgrind (Debian package valgrind; scripts/test-all.sh installs it)");
    assert_eq!(checks(&out), ALL);
}
