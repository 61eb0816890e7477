//! `tower-stack` (lb's engine built by hand from Tower layers over per-endpoint tonic channels)
//! against real `greeter-server` processes: the same JSON line as `greeter-client`, every call
//! answered, and calls spread per request over every backend.

mod support;

use std::process::Command;

use lb_examples::load::Report;
use support::{static_target, Server};

fn run_stack(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tower-stack"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("tower-stack runs")
}

#[test]
fn the_hand_built_stack_balances_every_call() {
    let servers = [Server::start(&[]), Server::start(&[]), Server::start(&[])];
    let target = static_target(&servers.iter().collect::<Vec<_>>());
    let out = run_stack(&["--target", &target, "--requests", "600", "--concurrency", "6", "--limit", "4"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tower-stack failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is exactly one JSON line: {stdout:?}");
    let r: Report = serde_json::from_str(lines[0]).expect("greeter-client's report shape");
    assert_eq!((r.requests, r.ok, r.errors), (600, 600, 0), "{r:?}");
    // Per-request picking over one connection per backend: every backend serves a real share
    // (a connection balancer would leave a single client on one backend).
    for s in &servers {
        let share = r.share(&s.addr.to_string());
        assert!(share >= 0.10, "{} got {share:.3} of the calls: {r:?}", s.addr);
    }
}

#[test]
fn a_bad_target_is_a_usage_error() {
    let out = run_stack(&["--target", "nope:///x", "--requests", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"), "{}", String::from_utf8_lossy(&out.stderr));
}
