//! The README's main command, run the way the suite can afford (`--quick`): it must work with
//! nothing but the binaries, print the readable table, and show the expected shapes — the L4 row
//! on one backend, tonic's balance_list spread over all, round robin even, PeakEWMA shunning the
//! slow backend, topology staying in the caller's zone. Assertions are on where calls went, never
//! on timings.

use std::process::Command;

use lb_examples::load::Report;
use serde::Deserialize;

#[derive(Deserialize)]
struct Output {
    backends: Vec<Backend>,
    scenarios: Vec<Scenario>,
}

#[derive(Deserialize)]
struct Backend {
    label: String,
    addr: String,
    zone: String,
    delay_ms: u64,
}

#[derive(Deserialize)]
struct Scenario {
    key: String,
    report: Report,
}

#[test]
fn quickstart_shows_the_four_shapes() {
    let out = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .args(["--quick", "--json"])
        .env("NO_COLOR", "1")
        .output()
        .expect("quickstart runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "quickstart failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));

    // The human-readable part: every scenario, the bars and the summary are there.
    for text in [
        "1. Plain tonic Channel through an L4 connection balancer",
        "2. tonic's own Channel::balance_list",
        "3. lb LbChannel, round robin per request",
        "4. lb LbChannel, power of two choices with PeakEWMA",
        "5. lb LbChannel, topology-aware",
        "Side by side",
        "100.0%",
        "█",
    ] {
        assert!(stdout.contains(text), "missing {text:?} in:\n{stdout}");
    }
    assert!(!stdout.contains('\x1b'), "NO_COLOR is honoured");

    let json = stdout.lines().last().expect("a last line");
    let parsed: Output = serde_json::from_str(json).expect("the last line is the JSON summary");
    assert_eq!(parsed.backends.len(), 4);
    let slow: Vec<&Backend> = parsed.backends.iter().filter(|b| b.delay_ms > 0).collect();
    assert_eq!(slow.len(), 1, "exactly one slow backend");
    let slow = slow[0];
    let zone_a: Vec<&Backend> = parsed.backends.iter().filter(|b| b.zone == "zone-a").collect();
    assert!(zone_a.iter().all(|b| b.delay_ms == 0), "the caller's zone has no slow backend");
    // Every backend is listed in the legend with its address.
    for b in &parsed.backends {
        assert!(stdout.contains(&b.addr) && stdout.contains(&b.label), "{} missing from the legend", b.addr);
    }

    let scenario = |key: &str| -> &Report {
        &parsed.scenarios.iter().find(|s| s.key == key).unwrap_or_else(|| panic!("no {key} scenario")).report
    };
    for s in &parsed.scenarios {
        assert!(s.report.ok > 0 && s.report.errors == 0, "{}: {:?}", s.key, s.report);
    }

    // 1. L4: one HTTP/2 connection, so one backend answered everything.
    let l4 = scenario("l4");
    assert_eq!(l4.per_backend.len(), 1, "L4 concentrates on one backend: {l4:?}");

    // 2. Round robin: even across all four, within 5 points of 25%.
    let rr = scenario("rr");
    for b in &parsed.backends {
        let share = rr.share(&b.addr);
        assert!((share - 0.25).abs() <= 0.05, "round robin gave {} {share:.3}: {rr:?}", b.label);
    }

    // tonic's balance_list is per request too, but random: every backend answers some calls. (Its
    // slow-backend share is random around 25%, so it is shown, not asserted.)
    let tonic_list = scenario("tonic-balance-list");
    assert_eq!(tonic_list.per_backend.len(), 4, "{tonic_list:?}");

    // 3. PeakEWMA: the slow backend gets little, far less than its round-robin share.
    let ewma = scenario("p2c-ewma");
    let slow_share = ewma.share(&slow.addr);
    assert!(slow_share <= 0.10, "the slow backend got {slow_share:.3} under PeakEWMA: {ewma:?}");
    assert!(slow_share < rr.share(&slow.addr) / 2.0);

    // 4. Topology: the caller is in zone-a and zone-a is healthy, so nothing leaves it.
    let topo = scenario("topology");
    let local: f64 = zone_a.iter().map(|b| topo.share(&b.addr)).sum();
    assert_eq!(local, 1.0, "topology kept calls in zone-a: {topo:?}");
    assert!(zone_a.iter().all(|b| topo.share(&b.addr) > 0.2), "and balanced inside it: {topo:?}");
}
