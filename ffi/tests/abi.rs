//! The C ABI called from Rust: every bad input gets its status code and message, never a crash.
//!
//! These call the exported functions directly, exactly as C would (same symbols, same ABI).

mod support;

use std::ffi::{c_char, CStr};
use std::ptr;
use std::time::{Duration, Instant};

use lb_ffi::*;
use support::handle::{addr, last_error, Bal};
use support::{static_target, Backend};

#[test]
fn null_arguments_are_errors() {
    let mut out = ptr::null_mut();
    let t = c"static:///127.0.0.1:1";
    // SAFETY: NULL is allowed by the contract and must be rejected, not dereferenced.
    unsafe {
        assert_eq!(
            lb_balancer_new(ptr::null(), ptr::null(), &mut out),
            lb_status::LB_ERR_NULL_ARGUMENT
        );
        assert!(
            last_error().contains("`target` must not be NULL"),
            "{}",
            last_error()
        );
        assert_eq!(
            lb_balancer_new(t.as_ptr(), ptr::null(), ptr::null_mut()),
            lb_status::LB_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            lb_balancer_wait_ready(ptr::null(), 1),
            lb_status::LB_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            lb_balancer_pick(ptr::null(), ptr::null(), 0, ptr::null_mut()),
            lb_status::LB_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            lb_balancer_report(ptr::null(), 1, 0, 0),
            lb_status::LB_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            lb_balancer_endpoints(ptr::null(), ptr::null_mut()),
            lb_status::LB_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            lb_registration_new(ptr::null(), ptr::null(), ptr::null_mut()),
            lb_status::LB_ERR_NULL_ARGUMENT
        );
        lb_balancer_free(ptr::null_mut());
        lb_registration_free(ptr::null_mut());
        lb_string_free(ptr::null_mut());
        assert!(!lb_version().is_null());
    }
    let b = Bal::new("static:///127.0.0.1:1", r#"{"probe":false}"#).expect("valid");
    // SAFETY: a live balancer; NULL out / NULL key with a length must be rejected.
    unsafe {
        assert_eq!(
            lb_balancer_pick(b.0, ptr::null(), 0, ptr::null_mut()),
            lb_status::LB_ERR_NULL_ARGUMENT
        );
        assert_eq!(
            lb_balancer_endpoints(b.0, ptr::null_mut()),
            lb_status::LB_ERR_NULL_ARGUMENT
        );
    }
    assert!(b.pick(None).is_ok(), "a valid pick still works");
    let mut p = std::mem::MaybeUninit::<lb_pick>::uninit();
    // SAFETY: NULL key with non-zero length is rejected before anything is read.
    let s = unsafe { lb_balancer_pick(b.0, ptr::null(), 5, p.as_mut_ptr()) };
    assert_eq!(s, lb_status::LB_ERR_NULL_ARGUMENT);
    assert!(last_error().contains("hash_key"), "{}", last_error());
}

#[test]
fn invalid_utf8_is_an_error() {
    let bad = [b's', b't', 0xff, 0xfe, 0];
    let mut out = ptr::null_mut();
    // SAFETY: a NUL-terminated (non-UTF-8) byte string.
    let s = unsafe { lb_balancer_new(bad.as_ptr().cast(), ptr::null(), &mut out) };
    assert_eq!(s, lb_status::LB_ERR_INVALID_UTF8);
    assert!(
        last_error().contains("`target` is not valid UTF-8"),
        "{}",
        last_error()
    );
    let t = c"static:///127.0.0.1:1";
    // SAFETY: as above, for the options.
    let s = unsafe { lb_balancer_new(t.as_ptr(), bad.as_ptr().cast(), &mut out) };
    assert_eq!(s, lb_status::LB_ERR_INVALID_UTF8);
    assert!(out.is_null());
}

#[test]
fn malformed_json_and_targets_are_errors_that_say_why() {
    for (target, options, status, needle) in [
        (
            "static:///127.0.0.1:1",
            "{",
            lb_status::LB_ERR_INVALID_OPTIONS,
            "EOF",
        ),
        (
            "static:///127.0.0.1:1",
            "[]",
            lb_status::LB_ERR_INVALID_OPTIONS,
            "expected a JSON object",
        ),
        (
            "static:///127.0.0.1:1",
            "null",
            lb_status::LB_ERR_INVALID_OPTIONS,
            "expected a JSON object",
        ),
        (
            "static:///127.0.0.1:1",
            r#"{"polcy":"rr"}"#,
            lb_status::LB_ERR_INVALID_OPTIONS,
            "unknown field `polcy`",
        ),
        (
            "static:///127.0.0.1:1",
            r#"{"policy":"random"}"#,
            lb_status::LB_ERR_INVALID_OPTIONS,
            "unknown variant",
        ),
        (
            "static:///127.0.0.1:1",
            r#"{"topology":["galaxy"]}"#,
            lb_status::LB_ERR_INVALID_OPTIONS,
            "galaxy",
        ),
        (
            "static:///127.0.0.1:1",
            r#"{"subset_size":3}"#,
            lb_status::LB_ERR_INVALID_OPTIONS,
            "subset_size and subset_client_id go together",
        ),
        (
            "static:///127.0.0.1:1",
            r#"{"policy":"maglev","slow_start_ms":30000}"#,
            lb_status::LB_ERR_INVALID_OPTIONS,
            "slow_start_ms does not apply to the hashing policies",
        ),
        (
            "static:///not-an-address",
            "",
            lb_status::LB_ERR_INVALID_TARGET,
            "not-an-address",
        ),
        ("greeter", "", lb_status::LB_ERR_INVALID_TARGET, "no scheme"),
        (
            "zookeeper://h/x",
            "",
            lb_status::LB_ERR_UNSUPPORTED_SCHEME,
            "zookeeper",
        ),
    ] {
        let (s, msg) = Bal::new(target, options).err().expect(options);
        assert_eq!(s, status, "{target} {options}: {msg}");
        assert!(msg.contains(needle), "{target} {options}: {msg}");
    }

    let mut reg = ptr::null_mut();
    let t = c"static:///127.0.0.1:1";
    // SAFETY: valid C strings, writable out-pointer.
    let s = unsafe { lb_registration_new(t.as_ptr(), c"{\"addr\":".as_ptr(), &mut reg) };
    assert_eq!(s, lb_status::LB_ERR_INVALID_OPTIONS);
    // SAFETY: as above.
    let s = unsafe {
        lb_registration_new(t.as_ptr(), c"{\"addr\":\"127.0.0.1:1\"}".as_ptr(), &mut reg)
    };
    assert_eq!(
        s,
        lb_status::LB_ERR_INVALID_TARGET,
        "static targets cannot register"
    );
    assert!(last_error().contains("cannot register"), "{}", last_error());
    assert!(reg.is_null());
}

#[test]
fn a_token_is_reported_once_and_unknown_tokens_are_refused() {
    let backend = Backend::start(false);
    let b = Bal::new(&static_target(&[&backend]), "").expect("valid");
    assert_eq!(b.ready(30_000), lb_status::LB_OK);
    let p = b.pick(None).expect("a pick");
    assert_ne!(p.token, 0);
    assert_eq!(addr(&p), backend.addr.to_string());
    assert_eq!(p.port, backend.addr.port());
    assert_eq!(
        b.endpoints()["endpoints"][0]["in_flight"],
        1,
        "a pick counts as in flight"
    );

    assert_eq!(b.report(p.token, 3, 0), lb_status::LB_ERR_INVALID_ARGUMENT);
    assert_eq!(b.report(p.token, -1, 0), lb_status::LB_ERR_INVALID_ARGUMENT);
    assert_eq!(
        b.endpoints()["pending_reports"],
        1,
        "a rejected report leaves the token pending"
    );
    assert_eq!(b.report(p.token, 0, 250_000), lb_status::LB_OK);
    assert_eq!(b.report(p.token, 0, 250_000), lb_status::LB_ERR_TOKEN_SPENT);
    assert!(
        last_error().contains("already reported"),
        "{}",
        last_error()
    );
    assert_eq!(b.report(0, 0, 0), lb_status::LB_ERR_UNKNOWN_TOKEN);
    assert_eq!(
        b.report(p.token + 1_000, 0, 0),
        lb_status::LB_ERR_UNKNOWN_TOKEN,
        "not issued yet"
    );
    assert_eq!(
        b.report(p.token ^ (1 << 60), 0, 0),
        lb_status::LB_ERR_UNKNOWN_TOKEN,
        "another balancer's tag"
    );

    let ep = &b.endpoints()["endpoints"][0];
    assert_eq!(ep["in_flight"], 0);
    assert!(
        ep["rtt_us"].as_u64().expect("rtt") >= 240_000,
        "the reported latency was recorded: {ep}"
    );
}

#[test]
fn an_unreported_pick_expires_as_cancelled() {
    let backend = Backend::start(false);
    let b = Bal::new(
        &static_target(&[&backend]),
        r#"{"report_timeout_ms":50,"outlier":{"consecutive_failures":1}}"#,
    )
    .expect("valid");
    assert_eq!(b.ready(30_000), lb_status::LB_OK);
    let p = b.pick(None).expect("a pick");
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.endpoints()["pending_reports"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the pick never expired: {}",
            b.endpoints()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let ep = &b.endpoints()["endpoints"][0];
    assert_eq!(ep["in_flight"], 0, "expiry released the in-flight count");
    assert_eq!(
        ep["phase"], "ready",
        "an expired pick is not a failure (one failure would eject here)"
    );
    assert_eq!(b.report(p.token, 1, 0), lb_status::LB_ERR_TOKEN_SPENT);
    assert!(last_error().contains("expired"), "{}", last_error());
}

#[test]
fn no_endpoint_fails_fast_and_wait_ready_times_out() {
    // Nothing listens on the port the dropped listener had: every probe is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let target = format!("static:///127.0.0.1:{port}");
    let b = Bal::new(&target, r#"{"endpoint_wait_ms":60000}"#).expect("valid");
    assert_eq!(b.ready(100), lb_status::LB_ERR_TIMEOUT);
    assert!(last_error().contains("not ready"), "{}", last_error());
    // The only endpoint is known to refuse: the pick fails at once instead of waiting the minute,
    // and says why.
    let start = Instant::now();
    assert_eq!(b.pick(None).err(), Some(lb_status::LB_ERR_UNAVAILABLE));
    assert!(start.elapsed() < Duration::from_secs(30), "waited {:?}", start.elapsed());
    let message = last_error().to_lowercase();
    assert!(
        message.contains("failed to connect") && message.contains("connection refused"),
        "{message}"
    );
    let ep = &b.endpoints()["endpoints"][0];
    assert_eq!(
        ep["healthy"], false,
        "a refused endpoint is out of rotation: {ep}"
    );

    // Asked to wait for readiness, the pick waits out the endpoint wait (the old key still works).
    let b = Bal::new(&target, r#"{"failfast_ms":200,"wait_for_ready":true}"#).expect("valid");
    assert_eq!(b.ready(100), lb_status::LB_ERR_TIMEOUT);
    let start = Instant::now();
    assert_eq!(b.pick(None).err(), Some(lb_status::LB_ERR_UNAVAILABLE));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    assert!(last_error().contains("no endpoint"), "{}", last_error());
}

#[test]
fn hash_keys_stick_to_one_endpoint() {
    for policy in ["hash", "maglev"] {
        hash_keys_stick_to_one_endpoint_with(policy);
    }
}

fn hash_keys_stick_to_one_endpoint_with(policy: &str) {
    let backends = [
        Backend::start(false),
        Backend::start(false),
        Backend::start(false),
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    let b = Bal::new(&static_target(&refs), &format!(r#"{{"policy":"{policy}"}}"#)).expect("valid");
    assert_eq!(b.ready(30_000), lb_status::LB_OK);
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..30 {
        let key = format!("user-{user}");
        let first = b.pick(Some(key.as_bytes())).expect("pick");
        assert_eq!(b.report(first.token, 0, -1), lb_status::LB_OK);
        for _ in 0..5 {
            let again = b.pick(Some(key.as_bytes())).expect("pick");
            assert_eq!(addr(&again), addr(&first), "{policy}: {key} moved");
            assert_eq!(b.report(again.token, 2, -1), lb_status::LB_OK);
        }
        seen.insert(addr(&first));
    }
    assert_eq!(seen.len(), 3, "{policy}: 30 keys spread over the three endpoints");
}

#[test]
fn locality_is_returned_and_preferred() {
    let backends = [Backend::start(false), Backend::start(false)];
    let target = format!(
        "static:///{};zone=a;region=r;node=n1,{};zone=b;region=r",
        backends[0].addr, backends[1].addr
    );
    let b = Bal::new(
        &target,
        r#"{"policy":"rr","locality":{"region":"r","zone":"b"}}"#,
    )
    .expect("valid");
    assert_eq!(b.ready(30_000), lb_status::LB_OK);
    for _ in 0..20 {
        let p = b.pick(None).expect("pick");
        assert_eq!(
            addr(&p),
            backends[1].addr.to_string(),
            "the caller's zone wins"
        );
        // SAFETY: NUL-terminated fields.
        let (zone, region, node) = unsafe {
            (
                CStr::from_ptr(p.zone.as_ptr()),
                CStr::from_ptr(p.region.as_ptr()),
                CStr::from_ptr(p.node.as_ptr()),
            )
        };
        assert_eq!(
            (zone.to_str(), region.to_str(), node.to_str()),
            (Ok("b"), Ok("r"), Ok(""))
        );
        assert_eq!(b.report(p.token, 0, -1), lb_status::LB_OK);
    }
}

#[test]
fn concurrent_picks_and_reports_from_many_threads() {
    let backends = [
        Backend::start(false),
        Backend::start(false),
        Backend::start(false),
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    // Slow start wraps the policy; all endpoints start together, so it holds nothing back.
    let b = Bal::new(&static_target(&refs), r#"{"policy":"p2c","slow_start_ms":30000}"#).expect("valid");
    assert_eq!(b.ready(30_000), lb_status::LB_OK);
    let tokens = std::sync::Mutex::new(std::collections::HashSet::new());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..2_000 {
                    let p = b.pick(None).expect("pick");
                    assert!(
                        tokens.lock().expect("lock").insert(p.token),
                        "tokens are unique"
                    );
                    assert_eq!(b.report(p.token, 0, 100), lb_status::LB_OK);
                }
            });
        }
    });
    let eps = b.endpoints();
    assert_eq!(eps["pending_reports"], 0);
    for ep in eps["endpoints"].as_array().expect("array") {
        assert_eq!(ep["in_flight"], 0, "{ep}");
    }
}

#[test]
fn last_error_is_truncated_like_snprintf_and_per_thread() {
    let _ = Bal::new("nope", "");
    let mut small = [0x7f as c_char; 8];
    // SAFETY: `small` is 8 writable bytes.
    let n = unsafe { lb_last_error_message(small.as_mut_ptr(), small.len()) };
    assert!(n > 8, "the full length is returned");
    assert_eq!(small[7], 0, "always NUL-terminated");
    // SAFETY: NULL/0 only asks for the length.
    assert_eq!(unsafe { lb_last_error_message(ptr::null_mut(), 0) }, n);
    let other = std::thread::spawn(|| {
        // SAFETY: NULL/0 only asks for the length.
        unsafe { lb_last_error_message(ptr::null_mut(), 0) }
    })
    .join()
    .expect("thread");
    assert_eq!(other, 0, "another thread has no error yet");
}

#[test]
fn probes_take_a_dead_endpoint_out_of_rotation_and_bring_it_back() {
    let stays = Backend::start(false);
    let dies = Backend::start(false);
    let dead_addr = dies.addr;
    let b = Bal::new(
        &static_target(&[&stays, &dies]),
        r#"{"policy":"rr","probe_interval_ms":100}"#,
    )
    .expect("valid");
    assert_eq!(b.ready(30_000), lb_status::LB_OK);
    let healthy = |b: &Bal| -> bool {
        let eps = b.endpoints();
        let ep = eps["endpoints"]
            .as_array()
            .expect("array")
            .iter()
            .find(|e| e["addr"] == dead_addr.to_string())
            .cloned()
            .expect("listed");
        ep["healthy"] == true
    };
    let wait = |what: &str, want: bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while healthy(&b) != want {
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}: {}",
                b.endpoints()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("both endpoints are in rotation", true);

    // The backend goes away; no request is sent, only probes notice.
    drop(dies);
    let gone = Instant::now();
    wait("the dead endpoint is out of rotation", false);
    assert!(
        gone.elapsed() < Duration::from_secs(3),
        "noticed after {:?}",
        gone.elapsed()
    );
    for _ in 0..20 {
        let p = b.pick(None).expect("pick");
        assert_eq!(
            addr(&p),
            stays.addr.to_string(),
            "picks avoid the dead endpoint"
        );
        assert_eq!(b.report(p.token, 0, -1), lb_status::LB_OK);
    }

    // It comes back on the same port: reconnect backoff probes it back into rotation.
    let listener = std::net::TcpListener::bind(dead_addr).expect("rebind the same port");
    wait("the endpoint is back", true);
    drop(listener);
}

#[test]
fn subsetting_connects_to_only_part_of_the_fleet() {
    let backends = [
        Backend::start(false),
        Backend::start(false),
        Backend::start(false),
        Backend::start(false),
    ];
    let refs: Vec<&Backend> = backends.iter().collect();
    let b = Bal::new(
        &static_target(&refs),
        r#"{"policy":"rr","subset_size":2,"subset_client_id":"pod-a"}"#,
    )
    .expect("valid");
    assert_eq!(b.ready(30_000), lb_status::LB_OK);
    let eps = b.endpoints();
    let listed = eps["endpoints"].as_array().expect("array").len();
    assert_eq!(listed, 2, "only the subset is known to the balancer: {eps}");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let p = b.pick(None).expect("pick");
        seen.insert(addr(&p));
        assert_eq!(b.report(p.token, 0, 100), lb_status::LB_OK);
    }
    assert_eq!(seen.len(), 2, "picks stay inside the subset: {seen:?}");
}

/// An `OrcaLoadReport` written field by field: 6 `rps_fractional`, 9 `application_utilization`.
fn orca_report(utilization: f64, qps: f64) -> Vec<u8> {
    let mut b = vec![(6 << 3) | 1];
    b.extend_from_slice(&qps.to_le_bytes());
    b.push((9 << 3) | 1);
    b.extend_from_slice(&utilization.to_le_bytes());
    b
}

#[test]
fn load_reports_weigh_the_picks() {
    let (a, b): (std::net::SocketAddr, std::net::SocketAddr) =
        ("127.0.0.1:9001".parse().expect("literal"), "127.0.0.1:9002".parse().expect("literal"));
    let bal = Bal::new(
        &format!("static:///{a},{b}"),
        r#"{"policy":"wrr-orca","blackout_ms":0,"weight_update_ms":100,"probe":false}"#,
    )
    .expect("valid");
    assert_eq!(bal.ready(5000), lb_status::LB_OK);

    // A garbage report is refused and the token stays pending.
    let p = bal.pick(None).expect("a pick");
    assert_eq!(bal.report_load(p.token, 0, &[0xff, 0xff]), lb_status::LB_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("report"), "{}", last_error());
    assert_eq!(bal.report(p.token, 0, 0), lb_status::LB_OK, "still pending after the bad report");

    // `a` reports utilization 0.2, `b` 0.8, at the same rate: weights 4 : 1 once the pool has
    // recomputed them (every 100 ms); rounds until the picks show it, for at most 10 s.
    let mut shares = (0u32, 0u32);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        shares = (0, 0);
        for _ in 0..100 {
            let p = bal.pick(None).expect("a pick");
            let is_a = p.port == a.port();
            let report = orca_report(if is_a { 0.2 } else { 0.8 }, 100.0);
            assert_eq!(bal.report_load(p.token, 0, &report), lb_status::LB_OK);
            if is_a {
                shares.0 += 1;
            } else {
                shares.1 += 1;
            }
        }
        if shares.0 >= 3 * shares.1 {
            break;
        }
    }
    assert!(shares.0.abs_diff(80) <= 3 && shares.1.abs_diff(20) <= 3, "4 : 1 from the reports: {shares:?}");
}
