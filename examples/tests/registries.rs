//! `greeter-server --register` and `greeter-client --target` through real registries: a real etcd
//! (feature `etcd`) and the in-repo Consul *double* (feature `consul`; no Consul server can be
//! installed on the test machines, so this is lb-doubles' implementation of Consul's HTTP API).
//!
//! Each run checks what an operator relies on: registered servers are discovered with their zones,
//! a server stopped with SIGTERM deregisters (the next client never sees it), and a server that
//! shuts down *while* a client is sending costs that client no failed calls.
#![cfg(any(feature = "etcd", feature = "consul"))]

mod support;

use std::thread;
use std::time::Duration;

use lb_examples::load::Report;
use support::{run_client, Server};

fn report(args: &[&str]) -> Report {
    report_and_log(args).0
}

/// The report and the client's stderr (which names the first failed calls, if any).
fn report_and_log(args: &[&str]) -> (Report, String) {
    let out = run_client(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "greeter-client failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    (serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}")), stderr)
}

/// Waits (polling, at most 30 s) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn assert_even(r: &Report, backends: &[&str]) {
    let fair = 1.0 / backends.len() as f64;
    for b in backends {
        assert!((r.share(b) - fair).abs() <= 0.05, "{b} got {:.3}: {r:?}", r.share(b));
    }
}

/// The whole lifecycle against one registry target (e.g. `etcd://127.0.0.1:2379/greeter`).
fn register_discover_deregister(target: &str) {
    let a = Server::start_logged(&["--zone", "a", "--register", target, "--ttl-secs", "5"]);
    let b = Server::start(&["--zone", "b", "--register", target, "--ttl-secs", "5"]);
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());

    // Both are discovered and share round robin evenly.
    let r = report(&["--target", target, "--requests", "200", "--concurrency", "4", "--policy", "rr"]);
    assert_eq!(r.errors, 0, "{r:?}");
    assert_even(&r, &[&a_addr, &b_addr]);

    // Zones travel through the registry: a caller in zone b stays in zone b.
    let r = report(&["--target", target, "--requests", "100", "--concurrency", "4", "--policy", "rr", "--zone", "b"]);
    assert_eq!(r.share(&b_addr), 1.0, "{r:?}");

    // A server stopped while a client is sending: the client loses no call.
    let client = {
        let target = target.to_string();
        thread::spawn(move || {
            report_and_log(&["--target", &target, "--duration-secs", "2.5", "--concurrency", "4", "--policy", "rr"])
        })
    };
    // Stop a once this client is using it (the earlier clients' calls are in its log too: wait
    // for one more than those).
    let answered = a.log().matches("hello answered").count();
    wait_until("a answers the running client", || a.log().matches("hello answered").count() > answered);
    assert!(a.terminate(), "greeter-server exits 0 after deregistering");
    let (r, log) = client.join().expect("client thread");
    assert_eq!(r.errors, 0, "a graceful shutdown costs no calls: {r:?}\n{log}");
    assert!(r.share(&a_addr) > 0.0 && r.share(&b_addr) > 0.0, "both served the client: {r:?}");

    // Deregistered: a new client sees only b.
    let r = report(&["--target", target, "--requests", "100", "--concurrency", "4", "--policy", "rr"]);
    assert_eq!((r.errors, r.share(&b_addr)), (0, 1.0), "{r:?}");
    drop(b);
}

#[cfg(feature = "etcd")]
#[test]
fn etcd_register_discover_deregister() {
    let etcd = support::Etcd::start();
    register_discover_deregister(&format!("etcd://127.0.0.1:{}/greeter", etcd.port));
}

#[cfg(feature = "consul")]
#[test]
fn consul_double_register_discover_deregister() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let consul = rt.block_on(lb_doubles::consul::ConsulDouble::start()).expect("start the Consul double");
    register_discover_deregister(&format!("consul://{}/greeter", consul.authority()));
    drop(consul);
}
