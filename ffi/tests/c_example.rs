//! The C example, compiled with the system C compiler and run against real TCP backends.

mod support;

use std::process::Command;
use std::sync::OnceLock;

use support::{build_c_example, static_target, Backend, Tally};

fn example() -> &'static std::path::Path {
    static BIN: OnceLock<std::path::PathBuf> = OnceLock::new();
    BIN.get_or_init(build_c_example)
}

fn run(cmd: &mut Command) -> Tally {
    let out = cmd.output().expect("run the C example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the C example failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("last_error "),
        "the error-contract walk ran:\n{stdout}"
    );
    Tally::parse(&stdout)
}

#[test]
fn c_picks_are_balanced_across_threads() {
    let backends = [
        Backend::start(false),
        Backend::start(false),
        Backend::start(false),
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    let t = run(Command::new(example()).args([
        &static_target(&refs),
        r#"{"policy":"rr"}"#,
        "300",
        "3",
    ]));
    assert_eq!(t.unavailable, 0);
    for b in &backends {
        let n = t.served(b);
        // Round robin over three: 300 picks (plus the one the contract walk made) split evenly.
        assert!(
            (99..=101).contains(&n),
            "{} served {n} of 300: {:?}",
            b.addr,
            t.served
        );
        assert_eq!(
            b.served(),
            n,
            "the backend itself saw every request the example counted"
        );
    }
}

#[test]
fn c_reports_steer_load_away_from_a_failing_endpoint() {
    let backends = [
        Backend::start(false),
        Backend::start(false),
        Backend::start(true),
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    let options =
        r#"{"policy":"p2c-ewma","outlier":{"consecutive_failures":3,"base_ejection_ms":60000}}"#;
    let t = run(Command::new(example()).args([&static_target(&refs), options, "300", "2"]));
    let failing = &backends[2];
    let bad = t.served(failing);
    // Without reports the failing endpoint would take about a third (~100). Two mechanisms steer
    // away from it: PeakEWMA (a failure keeps its latency estimate high while the healthy ones'
    // estimates fall, so P2C stops choosing it) and, at three consecutive failures, ejection. Which
    // acts first depends on timing; either way it gets a handful of requests at most.
    assert!(bad >= 1, "the failing endpoint was tried: {:?}", t.served);
    assert!(
        bad <= 30,
        "the failing endpoint kept getting traffic: {bad} of 300: {:?}",
        t.served
    );
    assert_eq!(
        t.served.get(&failing.addr.to_string()).map(|s| s.1),
        Some(bad),
        "every answer from it was a failure"
    );
    assert_eq!(
        t.served(&backends[0]) + t.served(&backends[1]),
        300 - bad,
        "the rest went to the healthy two"
    );
    if bad >= 3 {
        assert_eq!(t.phase(failing), "ejected", "three failures in a row eject");
    }
    assert_eq!(t.phase(&backends[0]), "ready");
}

/// No invalid access, and no definitely, indirectly or possibly lost block, with no suppressions.
///
/// `lb_balancer_free` joins the balancer's runtime threads, so Tokio leaves nothing behind. What
/// valgrind still lists as "still reachable" (a few hundred bytes) is arc-swap's global list of
/// debt nodes, which it allocates once per thread and keeps for reuse by design; still-reachable
/// blocks are not errors (`--errors-for-leak-kinds` below), so nothing needs suppressing.
#[test]
fn c_example_is_clean_under_valgrind() {
    let backends = [Backend::start(false), Backend::start(false)];
    let refs: Vec<&Backend> = backends.iter().collect();
    let t = run(Command::new("valgrind")
        .args([
            "--leak-check=full",
            "--error-exitcode=1",
            "--errors-for-leak-kinds=definite,indirect,possible",
        ])
        .arg(example())
        .args([&static_target(&refs), r#"{"policy":"rr"}"#, "40", "2"]));
    assert_eq!(t.served.values().map(|s| s.0).sum::<u64>(), 40);
}

/// The example's threads under helgrind, the library's internals suppressed (tests/c/helgrind.supp
/// says why): no race in how it shares the balancer and its tallies.
#[test]
fn c_example_is_race_free_under_helgrind() {
    let backends = [Backend::start(false), Backend::start(false)];
    let refs: Vec<&Backend> = backends.iter().collect();
    let supp = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/helgrind.supp");
    let t = run(Command::new("valgrind")
        .args(["--tool=helgrind", "--error-exitcode=1"])
        .arg(format!("--suppressions={}", supp.display()))
        .arg(example())
        .args([&static_target(&refs), r#"{"policy":"rr"}"#, "40", "4"]));
    assert_eq!(t.served.values().map(|s| s.0).sum::<u64>(), 40);
}
