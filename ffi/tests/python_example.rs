//! The Python `ctypes` example, run with `python3` against real TCP backends.

mod support;

use std::path::Path;
use std::process::Command;

use support::{lib_dir, static_target, Backend, Tally};

fn run(target: &str, options: &str, requests: &str, threads: &str) -> Tally {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lb_demo.py");
    let out = Command::new("python3")
        .arg(script)
        .args([target, options, requests, threads])
        .env("LB_FFI_LIB", lib_dir().join("liblb_ffi.so"))
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python example failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("last_error "),
        "the error-contract walk ran:\n{stdout}"
    );
    Tally::parse(&stdout)
}

#[test]
fn python_picks_are_balanced_across_threads() {
    let backends = [
        Backend::start(false),
        Backend::start(false),
        Backend::start(false),
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    let t = run(&static_target(&refs), r#"{"policy":"rr"}"#, "300", "4");
    assert_eq!(t.unavailable, 0);
    for b in &backends {
        let n = t.served(b);
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
fn python_reports_steer_load_away_from_a_failing_endpoint() {
    let backends = [
        Backend::start(true),
        Backend::start(false),
        Backend::start(false),
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    let options =
        r#"{"policy":"p2c","outlier":{"consecutive_failures":3,"base_ejection_ms":60000}}"#;
    let t = run(&static_target(&refs), options, "300", "2");
    let bad = t.served(&backends[0]);
    // Three failures in a row eject it; picks made while the ejection is being published (longer on a
    // loaded machine) still reach it. Without reports it would get about a third (~100).
    assert!(
        (3..=30).contains(&bad),
        "the failing endpoint got {bad} of 300: {:?}",
        t.served
    );
    assert_eq!(
        t.served(&backends[1]) + t.served(&backends[2]),
        300 - bad,
        "the rest went to the healthy two"
    );
    for ok in &backends[1..] {
        // Least-request P2C splits the rest about evenly (binomial, sd ≈ 8).
        assert!(
            t.served(ok) >= 90,
            "{} served {}: {:?}",
            ok.addr,
            t.served(ok),
            t.served
        );
    }
    assert_eq!(t.phase(&backends[0]), "ejected");
}
