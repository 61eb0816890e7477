//! What an `LbClient` records (lb_core::metrics) against real hyper servers on loopback: calls and
//! attempts labelled by HTTP status class, a body read to its end, and calls with no endpoint.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use lb_core::metrics::{ATTEMPTS_STARTED, ATTEMPT_DURATION, CALL_DURATION, ENDPOINT_PICKS, NO_ENDPOINT};
use lb_core::test_recorder;
use lb_hyper::LbClient;
use support::Backend;

fn client(name: &str, addrs: &[std::net::SocketAddr], wait: Duration) -> LbClient<Empty<Bytes>> {
    test_recorder::install();
    let eps = addrs.iter().map(|a| lb_core::Endpoint::new(*a)).collect();
    LbClient::builder()
        .endpoint_wait_timeout(wait)
        .build(lb_core::discover::fixed(eps), name)
        .expect("a valid client")
}

async fn get(client: &LbClient<Empty<Bytes>>, addr: std::net::SocketAddr) -> Result<u16, lb_hyper::Error> {
    let req = Request::get(format!("http://{addr}/x")).body(Empty::new()).expect("valid request");
    let rsp = client.request(req).await?;
    let status = rsp.status().as_u16();
    // The attempt (and the call) ends with the body.
    rsp.into_body().collect().await.expect("the body arrives");
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_calls_are_labelled_by_status_class() {
    let name = "hyper-metrics-classes";
    let backend = Backend::start(Duration::ZERO).await;
    let c = client(name, &[backend.addr], Duration::from_secs(5));
    assert!(c.ready(Duration::from_secs(5)).await);
    for _ in 0..3 {
        assert_eq!(get(&c, backend.addr).await.expect("answered"), 200);
    }
    backend.fail.store(true, Ordering::Relaxed);
    for _ in 0..2 {
        assert_eq!(get(&c, backend.addr).await.expect("answered"), 500);
    }
    let seen = test_recorder::recorded();
    let class = |status| [("grpc.target", name), ("grpc.status", status)];
    assert_eq!(seen.histogram_count(CALL_DURATION, &class("2xx")), 3);
    assert_eq!(seen.histogram_count(CALL_DURATION, &class("5xx")), 2);
    assert_eq!(seen.histogram_count(ATTEMPT_DURATION, &class("2xx")), 3);
    assert_eq!(seen.histogram_count(ATTEMPT_DURATION, &class("5xx")), 2);
    assert_eq!(seen.counter(ATTEMPTS_STARTED, &[("grpc.target", name)]), 5);
    let endpoint = backend.addr.to_string();
    assert_eq!(seen.counter(ENDPOINT_PICKS, &[("target", name), ("endpoint", endpoint.as_str())]), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_no_endpoint_is_unavailable() {
    let name = "hyper-metrics-unavailable";
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("bound");
    let c = client(name, &[closed], Duration::from_millis(200));
    let err = get(&c, closed).await.expect_err("nothing listens there");
    assert!(err.is_unavailable(), "{err}");
    let seen = test_recorder::recorded();
    assert_eq!(seen.histogram_count(CALL_DURATION, &[("grpc.target", name), ("grpc.status", "unavailable")]), 1);
    assert_eq!(seen.counter(NO_ENDPOINT, &[("target", name)]), 1);
    assert_eq!(seen.counter(ATTEMPTS_STARTED, &[("grpc.target", name)]), 0);
}
