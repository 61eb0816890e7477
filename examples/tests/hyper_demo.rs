//! `hyper-demo`: LbClient over HTTP/1.1 and HTTP/2 against three real hyper servers.

use std::process::Command;

use lb_examples::load::Report;
use serde::Deserialize;

#[derive(Deserialize)]
struct Output {
    backends: Vec<String>,
    scenarios: Vec<Scenario>,
}

#[derive(Deserialize)]
struct Scenario {
    key: String,
    report: Report,
    seen_host: String,
    seen_version: String,
}

#[test]
fn hyper_demo_balances_over_http1_and_http2() {
    let out = Command::new(env!("CARGO_BIN_EXE_hyper-demo"))
        .args(["--requests", "300", "--concurrency", "4", "--json"])
        .env("NO_COLOR", "1")
        .output()
        .expect("hyper-demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "hyper-demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1. LbClient over HTTP/1.1") && stdout.contains("2. LbClient over HTTP/2"), "{stdout}");
    let parsed: Output = serde_json::from_str(stdout.lines().last().expect("a last line")).expect("JSON summary");
    assert_eq!(parsed.backends.len(), 3);

    let http1 = parsed.scenarios.iter().find(|s| s.key == "http1-rr").expect("HTTP/1.1 scenario");
    assert_eq!((http1.report.ok, http1.report.errors), (300, 0), "{:?}", http1.report);
    for b in &parsed.backends {
        let share = http1.report.share(b);
        assert!((share - 1.0 / 3.0).abs() <= 0.05, "round robin gave {b} {share:.3}: {:?}", http1.report);
    }
    assert_eq!(http1.seen_version, "HTTP/1.1");
    assert_eq!(http1.seen_host, "greeter.internal", "HTTP/1.1 keeps the caller's Host");

    let http2 = parsed.scenarios.iter().find(|s| s.key == "http2-p2c-ewma").expect("HTTP/2 scenario");
    assert_eq!((http2.report.ok, http2.report.errors), (300, 0), "{:?}", http2.report);
    assert_eq!(http2.report.per_backend.len(), 3, "every server took requests: {:?}", http2.report);
    assert_eq!(http2.seen_version, "HTTP/2.0");
    assert_eq!(http2.seen_host, "greeter.internal", "HTTP/2 sends the caller's authority as :authority");
}
