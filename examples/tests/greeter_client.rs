//! `greeter-client` against three real `greeter-server` processes through a `static:///` target:
//! the JSON line's shape, an even split under round robin, and a slow server shunned by P2C
//! PeakEWMA.

mod support;

use lb_examples::load::Report;
use support::{run_client, static_target, Server};

/// Runs the client and parses its last stdout line, checking it is the only JSON on stdout.
fn report(args: &[&str]) -> Report {
    let out = run_client(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "greeter-client failed: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is exactly one JSON line (logs go to stderr): {stdout:?}");
    let value: serde_json::Value = serde_json::from_str(lines[0]).expect("the line is JSON");
    let keys: Vec<&str> = value.as_object().expect("a JSON object").keys().map(String::as_str).collect();
    for key in ["requests", "ok", "errors", "per_backend", "p50_ms", "p99_ms"] {
        assert!(keys.contains(&key), "missing {key} in {stdout}");
    }
    serde_json::from_value(value).expect("the documented report shape")
}

#[test]
fn round_robin_splits_evenly_over_three_servers() {
    let servers = [Server::start(&[]), Server::start(&[]), Server::start(&[])];
    let target = static_target(&servers.iter().collect::<Vec<_>>());
    let r = report(&["--target", &target, "--requests", "900", "--concurrency", "8", "--policy", "rr"]);

    assert_eq!((r.requests, r.ok, r.errors), (900, 900, 0), "{r:?}");
    assert_eq!(r.per_backend.len(), 3, "every server answered: {r:?}");
    for s in &servers {
        let share = r.share(&s.addr.to_string());
        assert!((share - 1.0 / 3.0).abs() <= 0.05, "{} got {share:.3} of calls: {r:?}", s.addr);
    }
    assert!(r.p50_ms > 0.0 && r.p50_ms <= r.p99_ms, "{r:?}");
}

#[test]
fn peak_ewma_sends_little_to_a_slow_server() {
    let fast = [Server::start(&[]), Server::start(&[])];
    let slow = Server::start(&["--delay-ms", "150"]);
    let target = static_target(&[&fast[0], &fast[1], &slow]);
    let r = report(&["--target", &target, "--requests", "600", "--concurrency", "8", "--policy", "p2c-ewma"]);

    assert_eq!((r.ok, r.errors), (600, 0), "{r:?}");
    // The behaviour: less than a fair third, and less than either fast server. How little is a
    // measurement, taken side by side with round robin in the benchmark report (bench/, scenario 3).
    let slow_share = r.share(&slow.addr.to_string());
    assert!(slow_share < 1.0 / 3.0, "the slow server got {slow_share:.3} of calls: {r:?}");
    for s in &fast {
        assert!(r.share(&s.addr.to_string()) > slow_share, "{} got less than the slow one: {r:?}", s.addr);
    }
}

#[test]
fn duration_budget_and_topology_preference() {
    let a = Server::start(&["--zone", "a"]);
    let b = Server::start(&["--zone", "b"]);
    // Zones travel in the static list's attributes, as a registry would carry them.
    let target = format!("static:///{};zone=a,{};zone=b", a.addr, b.addr);
    let r = report(&[
        "--target", &target, "--duration-secs", "0.5", "--concurrency", "4", "--policy", "rr", "--zone", "a",
    ]);
    assert!(r.requests > 0 && r.errors == 0, "{r:?}");
    assert_eq!(r.share(&a.addr.to_string()), 1.0, "all calls stay in the caller's zone: {r:?}");
}

#[test]
fn bad_arguments_fail_clearly_without_a_report() {
    let out = run_client(&["--target", "static:///127.0.0.1:1", "--requests", "1", "--policy", "random"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("p2c-ewma"), "lists the valid policies");

    let out = run_client(&["--target", "nonsense", "--requests", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonsense"));
}

#[test]
fn no_reachable_server_reports_errors_and_fails() {
    // A port nobody listens on: every call fails with UNAVAILABLE, at once since the only backend
    // refuses connections. `--failfast-ms`, the old name of `--endpoint-wait-ms`, still works.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = listener.local_addr().expect("addr");
    drop(listener);
    let out = run_client(&[
        "--target", &format!("static:///{dead}"), "--requests", "3", "--concurrency", "1", "--failfast-ms", "300",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Report = serde_json::from_slice(&out.stdout).expect("still one JSON line");
    assert_eq!((r.requests, r.ok, r.errors), (3, 0, 3), "{r:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Unavailable"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "no colour codes in logs that do not go to a terminal: {stderr}");
}

#[test]
fn health_checks_let_a_static_list_lose_a_server_without_errors() {
    // No registry: the server's NOT_SERVING on grpc.health.v1, sent at SIGTERM and followed by a
    // 1.5 s drain delay during which it still answers, is the only way the client can learn early
    // that it is going away. Without health checks the client keeps using it for that 1.5 s.
    let a = Server::start_logged(&["--drain-delay-ms", "1500"]);
    let b = Server::start(&[]);
    let target = static_target(&[&a, &b]);
    let client = std::thread::spawn(move || {
        run_client(&[
            "--target", &target, "--duration-secs", "3", "--concurrency", "4", "--policy", "rr", "--health-check",
        ])
    });
    // Stop a once the client is using it.
    a.wait_answered();
    let a_addr = a.addr.to_string();
    assert!(a.terminate(), "greeter-server exits 0");
    let out = client.join().expect("client thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: Report = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(r.errors, 0, "a health-checked shutdown costs no calls: {r:?}\n{stderr}");
    assert!(r.share(&a_addr) > 0.0, "a served before it stopped: {r:?}");
    // How the client learnt it: the health check's NOT_SERVING, not failed calls.
    assert!(
        stderr.lines().any(|l| l.contains("health check: not serving") && l.contains(&a_addr)),
        "the client took a out on its health check:\n{stderr}"
    );
}

#[test]
fn ring_hash_pins_a_key_to_one_server_and_spreads_many() {
    let servers = [Server::start(&[]), Server::start(&[]), Server::start(&[])];
    let target = static_target(&servers.iter().collect::<Vec<_>>());
    let one_key = |_: ()| report(&["--target", &target, "--requests", "200", "--policy", "hash", "--keys", "1"]);
    let first = one_key(());
    assert_eq!((first.ok, first.per_backend.len()), (200, 1), "one key, one server: {first:?}");
    // The ring depends only on membership, so a new client process maps the key the same way.
    let again = one_key(());
    assert_eq!(first.per_backend.keys().collect::<Vec<_>>(), again.per_backend.keys().collect::<Vec<_>>());

    let many = report(&["--target", &target, "--requests", "600", "--policy", "hash", "--keys", "300"]);
    assert_eq!(many.per_backend.len(), 3, "300 keys land on every server: {many:?}");
    for s in &servers {
        assert!(many.share(&s.addr.to_string()) > 0.15, "{} is nearly unused: {many:?}", s.addr);
    }
}

#[test]
fn weighted_round_robin_follows_registry_weights() {
    let heavy = Server::start(&[]);
    let light = Server::start(&[]);
    let target = format!("static:///{};weight=300,{};weight=100", heavy.addr, light.addr);
    let r = report(&["--target", &target, "--requests", "800", "--concurrency", "4", "--policy", "wrr"]);
    assert_eq!(r.ok, 800, "{r:?}");
    let share = r.share(&heavy.addr.to_string());
    assert!((share - 0.75).abs() <= 0.03, "weight 300 of 400 got {share:.3}: {r:?}");
}

#[test]
fn orca_load_reports_send_more_to_the_bigger_servers() {
    // Four servers of capacities 1, 1, 2 and 4 calls at once, each call 20 ms, reporting their
    // busy share with ORCA. Weighted round robin from the reports (A58) follows capacity.
    let servers: Vec<Server> = [1, 1, 2, 4]
        .iter()
        .map(|c| Server::start(&["--delay-ms", "20", "--capacity", &c.to_string(), "--orca"]))
        .collect();
    let target = static_target(&servers.iter().collect::<Vec<_>>());
    let r = report(&[
        "--target", &target, "--duration-secs", "3", "--concurrency", "6", "--policy", "wrr-orca",
        "--blackout-secs", "0", "--weight-update-ms", "200",
    ]);
    assert_eq!(r.errors, 0, "{r:?}");
    let share = |i: usize| r.share(&servers[i].addr.to_string());
    assert!(share(3) > share(2) && share(2) > share(0).max(share(1)), "shares follow capacity 4 > 2 > 1: {r:?}");
    assert!(share(3) >= 0.3, "the capacity-4 server takes well over a quarter: {r:?}");
}

#[test]
fn retries_recover_failing_calls_and_attempts_match_what_the_servers_received() {
    let servers = [
        Server::start(&["--fail-fraction", "0.5", "--drain-delay-ms", "0"]),
        Server::start(&["--fail-fraction", "0.5", "--drain-delay-ms", "0"]),
        Server::start(&["--fail-fraction", "0.5", "--drain-delay-ms", "0"]),
    ];
    let target = static_target(&servers.iter().collect::<Vec<_>>());
    let r = report(&[
        "--target", &target, "--requests", "200", "--concurrency", "4", "--policy", "rr", "--retries", "4",
        "--retry-budget", "none",
    ]);
    let attempts = r.attempts.expect("greeter-client reports attempts");
    let received: u64 = servers.into_iter().map(|s| s.terminate_with_calls().1).sum();
    assert_eq!(attempts, received, "the client's attempts are the calls the servers received: {r:?}");
    // Half the attempts fail: about 2 attempts per call (1.94 with five), each failed call
    // having used all five.
    assert!(attempts > 300 && attempts <= 5 * 200, "{r:?}");
    // A call fails only when five attempts in a row do (1 in 32).
    assert!(r.ok >= 170, "retries recovered most calls: {r:?}");
    assert_eq!(r.ok + r.errors, 200, "{r:?}");
}

#[test]
fn without_retries_each_call_is_one_attempt() {
    let servers = [Server::start(&["--fail-fraction", "0.5", "--drain-delay-ms", "0"]), Server::start(&["--drain-delay-ms", "0"])];
    let target = static_target(&servers.iter().collect::<Vec<_>>());
    let out = run_client(&["--target", &target, "--requests", "100", "--concurrency", "4", "--policy", "rr"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Report = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(r.attempts, Some(100), "{r:?}");
    assert!(r.errors > 0, "the failing server's answers reached the caller: {r:?}");
    let received: u64 = servers.into_iter().map(|s| s.terminate_with_calls().1).sum();
    assert_eq!(received, 100);
}

#[test]
fn hedging_answers_from_the_fast_server_when_the_other_is_in_its_tail() {
    // Every call to the slow server waits 10 s more; a hedge after 20 ms goes to the other one,
    // whose answer wins, and the slow attempt is cancelled.
    let slow = Server::start(&["--tail-fraction", "1", "--tail-ms", "10000", "--drain-delay-ms", "0"]);
    let fast = Server::start(&["--drain-delay-ms", "0"]);
    let target = static_target(&[&slow, &fast]);
    let r = report(&[
        "--target", &target, "--requests", "20", "--concurrency", "1", "--policy", "rr", "--hedge-after-ms", "20",
    ]);
    assert_eq!((r.ok, r.errors), (20, 0), "{r:?}");
    assert_eq!(r.per_backend.keys().collect::<Vec<_>>(), vec![&fast.addr.to_string()], "{r:?}");
    let attempts = r.attempts.expect("greeter-client reports attempts");
    let (_, slow_calls) = slow.terminate_with_calls();
    let (_, fast_calls) = fast.terminate_with_calls();
    assert!(slow_calls >= 1, "round robin sent some first attempts to the slow server");
    assert_eq!(fast_calls, 20, "every call ended at the fast server");
    assert_eq!(attempts, slow_calls + fast_calls, "{r:?}");
}

#[test]
fn retry_and_hedge_arguments_are_checked() {
    for args in [
        &["--retries", "5"][..],
        &["--retry-budget", "lots"][..],
        &["--hedge-after", "95"][..],
        &["--hedge-after-ms", "10", "--hedge-after", "p95"][..],
        &["--hedge-attempts", "9", "--hedge-after-ms", "10"][..],
    ] {
        let mut all = vec!["--target", "static:///127.0.0.1:1", "--requests", "1"];
        all.extend_from_slice(args);
        let out = run_client(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?} is a usage error: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty(), "{args:?}: no report");
    }
}
