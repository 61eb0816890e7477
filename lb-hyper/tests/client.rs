//! `LbClient` over HTTP/1.1 and HTTP/2 against real hyper servers on loopback.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use lb_core::policy::RoundRobin;
use lb_hyper::{LbClient, Protocol};
use support::{backends, static_target};

async fn wait_healthy(client: &LbClient<Empty<Bytes>>, n: usize) {
    // Generous: the machines running these tests are shared and sometimes slow.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.endpoints().iter().filter(|e| e.healthy).count() != n {
        assert!(tokio::time::Instant::now() < deadline, "not {n} healthy: {:?}", client.endpoints());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn get(client: &LbClient<Empty<Bytes>>, uri: &str) -> (http::StatusCode, String) {
    let rsp = client.request(Request::get(uri).body(Empty::new()).expect("valid request")).await.expect("response");
    let status = rsp.status();
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn round_robin_over(protocol: Protocol) {
    let bs = backends(3, Duration::ZERO).await;
    let client = LbClient::builder()
        .protocol(protocol)
        .policy(RoundRobin::new())
        .build_from_target::<Empty<Bytes>>(&static_target(&bs))
        .expect("valid target");
    wait_healthy(&client, 3).await;
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let client = client.clone();
        tasks.spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..50 {
                let (status, body) = get(&client, "/echo").await;
                assert_eq!(status, 200);
                seen.push(body);
            }
            seen
        });
    }
    while let Some(r) = tasks.join_next().await {
        for body in r.expect("no panic") {
            let mut parts = body.split(' ');
            let backend = parts.next().expect("address").to_string();
            let host = parts.next().expect("host").to_string();
            let version = parts.next().expect("version").to_string();
            let target = parts.next().expect("request target").to_string();
            match protocol {
                Protocol::Http1 => {
                    assert_eq!(version, "HTTP/1.1");
                    assert_eq!(host, backend, "a path-only URI gets the endpoint as Host");
                    assert_eq!(target, "/echo", "origin-form request-target");
                }
                Protocol::Http2 => {
                    assert_eq!(version, "HTTP/2.0");
                    assert_eq!(target, format!("http://{backend}/echo"), "a path-only URI gets the endpoint as :authority");
                }
            }
            *per.entry(backend).or_default() += 1;
        }
    }
    assert_eq!(per.len(), 3, "{per:?}");
    assert!(per.values().all(|n| *n == 100), "round robin is exact: {per:?}");
    for e in client.endpoints() {
        assert_eq!(e.in_flight, 0, "every body was read to the end: {e:?}");
        match protocol {
            Protocol::Http1 => assert!(e.connections >= 1 && e.connections <= 6, "a small pool: {e:?}"),
            Protocol::Http2 => assert_eq!(e.connections, 1, "one multiplexed connection: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_http1() {
    round_robin_over(Protocol::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_http2() {
    round_robin_over(Protocol::Http2).await;
}

/// `(host, request-target)` the backend saw for `req`.
async fn seen(client: &LbClient<Empty<Bytes>>, req: Request<Empty<Bytes>>) -> (String, String) {
    let rsp = client.request(req).await.expect("response");
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    let parts: Vec<&str> = body.split(' ').collect();
    (parts[1].to_string(), parts[3].to_string())
}

fn req(uri: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).body(Empty::new()).expect("valid request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keeps_the_addressed_host_and_sends_origin_form() {
    let bs = backends(1, Duration::ZERO).await;
    let client = LbClient::builder().build_from_target::<Empty<Bytes>>(&static_target(&bs)).expect("valid");
    wait_healthy(&client, 1).await;
    // Absolute-form would make the server ignore Host (RFC 9112 §3.2.2): the target must be a path.
    assert_eq!(seen(&client, req("http://orders.internal/echo?x=1")).await, ("orders.internal".into(), "/echo?x=1".into()));
    let explicit = Request::get("/echo").header("host", "explicit.example").body(Empty::new()).expect("valid");
    assert_eq!(seen(&client, explicit).await, ("explicit.example".into(), "/echo".into()), "the caller's Host is kept");

    let fixed = LbClient::builder()
        .authority("orders.internal:8080")
        .build_from_target::<Empty<Bytes>>(&static_target(&bs))
        .expect("valid");
    wait_healthy(&fixed, 1).await;
    assert_eq!(seen(&fixed, req("/echo")).await.0, "orders.internal:8080", "the configured authority becomes Host");
    assert_eq!(seen(&fixed, req("http://other.example/echo")).await.0, "orders.internal:8080", "and wins over the URI's");
    let explicit = Request::get("/echo").header("host", "explicit.example").body(Empty::new()).expect("valid");
    assert_eq!(seen(&fixed, explicit).await.0, "explicit.example", "a Host the caller set still wins");
    let err = LbClient::builder()
        .authority("bad authority")
        .build_from_target::<Empty<Bytes>>(&static_target(&bs))
        .expect_err("an invalid authority");
    assert!(err.is_config() && err.to_string().contains("bad authority"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_sends_the_addressed_authority() {
    let bs = backends(1, Duration::ZERO).await;
    let client = LbClient::builder()
        .protocol(Protocol::Http2)
        .build_from_target::<Empty<Bytes>>(&static_target(&bs))
        .expect("valid");
    wait_healthy(&client, 1).await;
    assert_eq!(seen(&client, req("http://orders.internal/echo")).await.1, "http://orders.internal/echo");
    assert_eq!(seen(&client, req("/echo")).await.1, format!("http://{}/echo", bs[0].addr));
    let with_host = Request::get("/echo").header("host", "explicit.example").body(Empty::new()).expect("valid");
    assert_eq!(seen(&client, with_host).await.1, "http://explicit.example/echo", "a Host the caller set becomes :authority");

    let fixed = LbClient::builder()
        .protocol(Protocol::Http2)
        .authority("orders.internal:8080")
        .build_from_target::<Empty<Bytes>>(&static_target(&bs))
        .expect("valid");
    wait_healthy(&fixed, 1).await;
    assert_eq!(seen(&fixed, req("/echo")).await.1, "http://orders.internal:8080/echo");
    assert_eq!(seen(&fixed, req("http://other.example/echo")).await.1, "http://orders.internal:8080/echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoint_is_unavailable_within_failfast() {
    let client = LbClient::builder()
        .endpoint_wait_timeout(Duration::from_millis(200))
        .build::<Empty<Bytes>>(lb_core::discover::fixed(vec![]), "static:///")
        .expect("builds");
    let started = tokio::time::Instant::now();
    let err = client.request(Request::get("/").body(Empty::new()).expect("valid")).await.expect_err("no endpoint");
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(err.target_name(), Some("static:///"));
    let waited = started.elapsed();
    // The bound is the behaviour (no hang); five times the wait survives a loaded machine.
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_millis(200) * 5, "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_checks_take_a_backend_out_and_back() {
    let bs = backends(2, Duration::ZERO).await;
    let client = LbClient::builder()
        .policy(RoundRobin::new())
        .health_check_path("/health", Duration::from_millis(50))
        .build_from_target::<Empty<Bytes>>(&static_target(&bs))
        .expect("valid");
    wait_healthy(&client, 2).await;
    bs[0].healthy.store(false, std::sync::atomic::Ordering::Relaxed);
    wait_healthy(&client, 1).await;
    let before = bs[0].served();
    for _ in 0..20 {
        assert_eq!(get(&client, "/echo").await.0, 200);
    }
    assert_eq!(bs[0].served(), before, "unhealthy backend got requests");
    bs[0].healthy.store(true, std::sync::atomic::Ordering::Relaxed);
    wait_healthy(&client, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_ejected_by_outlier_detection() {
    let bs = backends(3, Duration::ZERO).await;
    bs[0].fail.store(true, std::sync::atomic::Ordering::Relaxed);
    let client = LbClient::builder()
        .protocol(Protocol::Http2)
        .policy(RoundRobin::new())
        .outlier_detection(Some(lb_core::pool::OutlierConfig {
            max_ejected_fraction: 0.5,
            ..Default::default()
        }))
        .build_from_target::<Empty<Bytes>>(&static_target(&bs))
        .expect("valid");
    wait_healthy(&client, 3).await;
    let failing = || client.endpoints().into_iter().find(|e| e.endpoint.addr() == bs[0].addr).expect("known");
    // 5 consecutive 5xx eject it (OutlierConfig::default). The ejection is the pool task's doing,
    // a moment after the fifth failure: requests sent meanwhile may still reach the backend.
    let mut errors = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while failing().healthy {
        assert!(tokio::time::Instant::now() < deadline, "not ejected after {errors} errors: {:?}", failing());
        if get(&client, "/echo").await.0 == 500 {
            errors += 1;
        }
    }
    assert!(errors >= 5, "ejected after {errors} 5xx answers, before the fifth");
    // Once out of rotation it gets nothing.
    let served = bs[0].served();
    for _ in 0..60 {
        assert_eq!(get(&client, "/echo").await.0, 200);
    }
    assert_eq!(bs[0].served(), served, "the ejected backend got requests");
    assert!(!failing().healthy, "{:?}", failing());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_http1_backend_requests_go_elsewhere() {
    let bs = backends(2, Duration::ZERO).await;
    let client = LbClient::builder()
        .policy(RoundRobin::new())
        .build_from_target::<Empty<Bytes>>(&static_target(&bs))
        .expect("valid");
    wait_healthy(&client, 2).await;
    bs[1].kill().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.endpoints().iter().filter(|e| e.healthy).count() != 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for _ in 0..20 {
        let (status, body) = get(&client, "/echo").await;
        assert_eq!(status, 200);
        assert!(body.starts_with(&bs[0].addr.to_string()));
    }
}

/// Sends `waves` bursts of `n` concurrent slow requests.
async fn bursts(client: &LbClient<Empty<Bytes>>, waves: usize, n: usize) {
    for _ in 0..waves {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let client = client.clone();
            set.spawn(async move { get(&client, "/echo").await.0 });
        }
        while let Some(status) = set.join_next().await {
            assert_eq!(status.expect("no panic"), 200);
        }
    }
}

async fn surplus_connections_close_when_idle(protocol: Protocol) {
    // One backend per client, so each backend's open count is one client's connections.
    let bs = backends(2, Duration::from_millis(40)).await;
    let build = |b: &support::Backend, idle: Option<Duration>| {
        LbClient::builder()
            .protocol(protocol)
            .max_streams_per_connection(2)
            .max_connections_per_endpoint(3)
            .connection_idle_timeout(idle)
            .build_from_target::<Empty<Bytes>>(&format!("static:///{}", b.addr))
            .expect("valid")
    };
    let open = |b: &support::Backend| b.open.load(std::sync::atomic::Ordering::Relaxed);
    let wait_open = |b: &support::Backend, n: usize, what: &'static str| {
        let b_open = b.open.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while b_open.load(std::sync::atomic::Ordering::Relaxed) != n {
                assert!(tokio::time::Instant::now() < deadline, "{what}: {} open", b_open.load(std::sync::atomic::Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    // Without an idle timeout the connections a burst opened stay: this client goes idle first,
    // and is checked once the other one, idle for less time, has closed its surplus.
    let keep = build(&bs[0], None);
    wait_healthy(&keep, 1).await;
    bursts(&keep, 3, 12).await;
    assert_eq!(keep.endpoints()[0].connections, 3, "a burst of 12 opens the 3 allowed connections");

    // With one, the surplus closes once idle; the endpoint's first connection stays and serves.
    let client = build(&bs[1], Some(Duration::from_millis(200)));
    wait_healthy(&client, 1).await;
    bursts(&client, 3, 12).await;
    assert_eq!(client.endpoints()[0].connections, 3, "a burst of 12 opens the 3 allowed connections");
    wait_open(&bs[1], 1, "idle surplus connections were not closed").await;
    assert_eq!((keep.endpoints()[0].connections, open(&bs[0])), (3, 3), "kept without an idle timeout");
    assert_eq!(client.endpoints()[0].connections, 1);
    let accepted = bs[1].accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&client, "/echo").await.0, 200);
    assert_eq!(bs[1].accepted.load(std::sync::atomic::Ordering::Relaxed), accepted, "served on the kept connection");
    assert!(client.endpoints()[0].healthy, "closing idle extras is not a disconnect");

    drop(keep);
    wait_open(&bs[0], 0, "a dropped client closes its connections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surplus_http1_connections_close_when_idle() {
    surplus_connections_close_when_idle(Protocol::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_http2_connections_close_when_idle() {
    surplus_connections_close_when_idle(Protocol::Http2).await;
}

/// Whether this machine has IPv6 loopback (`::1`); a test that needs it says so when it does not.
fn ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_endpoint_is_called_with_a_bracketed_authority() {
    if !ipv6_loopback() {
        lb_core::test_util::skip("no IPv6 loopback (::1) on this machine");
        return;
    }
    let b = support::Backend::start_with("[::1]:0".parse().expect("addr"), Duration::ZERO, None).await;
    let target = format!("static:///{}", b.addr);
    assert!(target.starts_with("static:///[::1]:"), "{target}");
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let client = LbClient::builder().protocol(protocol).build_from_target::<Empty<Bytes>>(&target).expect("valid");
        wait_healthy(&client, 1).await;
        let (status, body) = get(&client, "/echo").await;
        assert_eq!(status, 200, "{body}");
        let parts: Vec<&str> = body.split(' ').collect();
        assert_eq!(parts[0], b.addr.to_string(), "served by the IPv6 backend");
        match protocol {
            Protocol::Http1 => assert_eq!(parts[1], b.addr.to_string(), "Host is [::1]:port"),
            Protocol::Http2 => assert_eq!(parts[3], format!("http://{}/echo", b.addr), ":authority is [::1]:port"),
        }
    }
}
