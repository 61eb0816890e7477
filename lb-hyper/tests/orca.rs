//! Load reports and overload answers through real servers on loopback: HTTP/2 servers (the h2
//! crate) that write the `endpoint-load-metrics-bin` trailer by hand, as another gRPC
//! implementation would, drive lb's weighted round robin to the shares their reports imply; an
//! HTTP/1.1 server answering 429 with `Retry-After` is left alone for that long.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use lb_core::policy::{RoundRobin, WeightedRoundRobin};
use lb_hyper::{LbClient, Protocol};
use tokio::net::TcpListener;

/// An `OrcaLoadReport` written field by field from the published numbering: 6
/// `rps_fractional`, 9 `application_utilization` (both doubles, wire type 1).
fn report_bytes(utilization: f64, qps: f64) -> Vec<u8> {
    let mut b = vec![(6 << 3) | 1];
    b.extend_from_slice(&qps.to_le_bytes());
    b.push((9 << 3) | 1);
    b.extend_from_slice(&utilization.to_le_bytes());
    b
}

/// An HTTP/2 server answering every request with its address and a trailer reporting
/// `utilization`; counts what it served.
async fn reporting_server(utilization: f64) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound");
    let served = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&served);
    let trailer = base64::engine::general_purpose::STANDARD.encode(report_bytes(utilization, 100.0));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (counter, trailer) = (Arc::clone(&counter), trailer.clone());
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else { return };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let rsp = http::Response::builder().status(200).body(()).expect("valid response");
                    let Ok(mut body) = respond.send_response(rsp, false) else { continue };
                    let _ = body.send_data(Bytes::from(addr.to_string()), false);
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("endpoint-load-metrics-bin", trailer.parse().expect("base64 is a valid value"));
                    let _ = body.send_trailers(trailers);
                }
            });
        }
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_utilization_sets_the_shares() {
    // Same queries per second, utilization 0.2 / 0.4 / 0.8: weights 4 : 2 : 1 (gRFC A58).
    let mut servers = Vec::new();
    for u in [0.2, 0.4, 0.8] {
        servers.push(reporting_server(u).await);
    }
    let target = format!("static:///{}", servers.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>().join(","));
    let policy = WeightedRoundRobin::from_load_reports()
        .blackout_period(Duration::ZERO)
        .weight_update_period(Duration::from_millis(100));
    let client: LbClient<Empty<Bytes>> = LbClient::builder()
        .protocol(Protocol::Http2)
        .policy(policy)
        .build_from_target(&target)
        .expect("valid target");
    assert!(client.ready(Duration::from_secs(5)).await);

    // Every server must have reported once before weights can exist: round robin sends to each.
    for _ in 0..3 {
        let rsp = client.request(Request::get("/").body(Empty::new()).expect("valid")).await.expect("answered");
        rsp.into_body().collect().await.expect("body read to its trailers");
    }
    // Wait for the pool's next rebuild to use the reports (an event: a snapshot with weights).
    let mut changed = client.pool().subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.pool().snapshot().picker().weights().is_none_or(|w| w.fallback) {
        tokio::time::timeout_at(deadline, changed.changed())
            .await
            .expect("weights within 10 s")
            .expect("pool alive");
    }
    let before: Vec<usize> = servers.iter().map(|(_, s)| s.load(Ordering::Relaxed)).collect();
    for _ in 0..700 {
        let rsp = client.request(Request::get("/").body(Empty::new()).expect("valid")).await.expect("answered");
        rsp.into_body().collect().await.expect("body");
    }
    let got: Vec<usize> = servers.iter().zip(&before).map(|((_, s), b)| s.load(Ordering::Relaxed) - b).collect();
    for (got, want) in got.iter().zip([400, 200, 100]) {
        assert!(got.abs_diff(want) <= 35, "shares {got:?} against 400 / 200 / 100");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_429_with_retry_after_is_left_alone() {
    let busy = support::Backend::start_answering(429, &[("retry-after", "60")]).await;
    let calm = support::Backend::start(Duration::ZERO).await;
    let client: LbClient<Empty<Bytes>> = LbClient::builder()
        .policy(RoundRobin::new())
        .overload_penalty_cap(Some(Duration::from_secs(30)))
        .build_from_target(&format!("static:///{},{}", busy.addr, calm.addr))
        .expect("valid target");
    let mut changed = client.pool().subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.endpoints().iter().filter(|e| e.healthy).count() < 2 {
        tokio::time::timeout_at(deadline, changed.changed()).await.expect("both ready").expect("pool alive");
    }
    // Round robin reaches the busy one within two requests; its 429 sends it out of picks.
    for _ in 0..2 {
        let rsp = client.request(Request::get("/").body(Empty::new()).expect("valid")).await.expect("answered");
        rsp.into_body().collect().await.expect("body");
    }
    assert_eq!(busy.served.load(Ordering::Relaxed), 1);
    while client.endpoints().iter().any(|e| e.endpoint.addr() == busy.addr && e.healthy) {
        tokio::time::timeout_at(deadline, changed.changed()).await.expect("penalized within 10 s").expect("pool alive");
    }
    for _ in 0..20 {
        let rsp = client.request(Request::get("/").body(Empty::new()).expect("valid")).await.expect("answered");
        assert_eq!(rsp.status(), 200);
        rsp.into_body().collect().await.expect("body");
    }
    assert_eq!(busy.served.load(Ordering::Relaxed), 1, "nothing more went to the overloaded server");
}
