//! Failures: a backend killed under load, no endpoints at all, retries.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lb_core::discover;
use lb_core::policy::RoundRobin;
use lb_core::pool::EndpointPhase;
use lb_tonic::{LbChannel, RetryPolicy};
use support::lbtest::echo_client::EchoClient;
use support::lbtest::EchoRequest;
use support::{backends, static_target, wait_healthy};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_ejected_and_later_calls_all_succeed() {
    let bs = backends(&[2, 2, 2]).await;
    let victim = bs[2].addr;
    let channel = LbChannel::builder()
        .policy(RoundRobin::new())
        .build_from_target(&static_target(&bs))
        .expect("valid target");
    wait_healthy(&channel, 3, Duration::from_secs(30)).await;

    let killed = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let after_kill_ok = Arc::new(AtomicUsize::new(0));
    let after_kill_to_victim = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let concurrency = 12;
    for _ in 0..concurrency {
        let mut client = EchoClient::new(channel.clone());
        let (killed, done, ok, to_victim) = (killed.clone(), done.clone(), after_kill_ok.clone(), after_kill_to_victim.clone());
        tasks.spawn(async move {
            let mut failures_started_after_kill = Vec::new();
            let mut failures = 0usize;
            while !done.load(Ordering::SeqCst) {
                let started_after_kill = killed.load(Ordering::SeqCst);
                match client.unary(EchoRequest::default()).await {
                    Ok(r) if started_after_kill => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if r.into_inner().backend == victim.to_string() {
                            to_victim.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(s) if started_after_kill => failures_started_after_kill.push(s),
                    Err(_) => failures += 1,
                }
            }
            (failures, failures_started_after_kill)
        });
    }
    // Under load on every backend, the victim included, before it dies.
    eventually("every backend serves the load", || bs.iter().all(|b| b.served() > 0)).await;
    bs[2].kill().await;
    // Calls written to the victim's connection before the client saw it close may fail (they were
    // sent to it). Once the pool has taken the victim out of rotation, every call must succeed.
    eventually("the killed backend leaves the rotation", || {
        !channel.endpoints().into_iter().find(|e| e.endpoint.addr() == victim).expect("victim still known").healthy
    })
    .await;
    killed.store(true, Ordering::SeqCst);
    eventually("load goes on after the ejection", || after_kill_ok.load(Ordering::Relaxed) > 100).await;
    done.store(true, Ordering::SeqCst);
    let mut in_flight_failures = 0;
    while let Some(r) = tasks.join_next().await {
        let (failures, after) = r.expect("caller task does not panic");
        in_flight_failures += failures;
        assert!(after.is_empty(), "calls started after the ejection failed: {after:?}");
    }
    assert!(in_flight_failures <= concurrency, "only calls in flight at the kill may fail: {in_flight_failures}");
    eprintln!("calls failed between the kill and the ejection: {in_flight_failures}");
    assert_eq!(after_kill_to_victim.load(Ordering::Relaxed), 0, "no reply came from the killed backend after its ejection");
    let e = channel.endpoints().into_iter().find(|e| e.endpoint.addr() == victim).expect("victim still known");
    assert!(!e.healthy, "killed backend out of rotation: {e:?}");
    assert!(matches!(e.phase, EndpointPhase::Ejected | EndpointPhase::Connecting), "{e:?}");
}

/// Waits (checking every millisecond, at most 30 s: the machines are shared) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_endpoints_fail_unavailable_within_failfast() {
    let failfast = Duration::from_millis(300);
    let channel = LbChannel::builder()
        .endpoint_wait_timeout(failfast)
        .build(discover::fixed(vec![]), "static:///")
        .expect("channel builds");
    let mut client = EchoClient::new(channel.clone());
    let started = Instant::now();
    let status = client.unary(EchoRequest::default()).await.expect_err("no endpoint to answer");
    let waited = started.elapsed();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("static:///"), "the message names the target: {status:?}");
    // The bound is the behaviour (no hang); five times the wait survives a loaded machine.
    assert!(waited >= failfast && waited < failfast * 5, "failed after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_fail_at_once_saying_why() {
    // Ports nobody listens on: connection refused, over and over.
    let port = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let target = format!("static:///127.0.0.1:{},127.0.0.1:{}", port(), port());
    // A minute's wait for an endpoint is not waited out: every endpoint is known to refuse.
    let wait = Duration::from_secs(60);
    let channel = LbChannel::builder().endpoint_wait_timeout(wait).build_from_target(&target).expect("valid target");
    let started = Instant::now();
    let status = EchoClient::new(channel.clone()).unary(EchoRequest::default()).await.expect_err("refused");
    assert!(started.elapsed() < wait / 2, "failed without waiting out the wait: {:?}", started.elapsed());
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let message = status.message().to_lowercase();
    assert!(message.contains(&target), "names the target: {status:?}");
    assert!(message.contains("failed to connect") && message.contains("connection refused"), "says why: {status:?}");

    // Wait-for-ready calls wait the whole time instead (and still say why).
    let patient = LbChannel::builder()
        .endpoint_wait_timeout(Duration::from_millis(300))
        .wait_for_ready(true)
        .build_from_target(&target)
        .expect("valid target");
    let started = Instant::now();
    let status = EchoClient::new(patient).unary(EchoRequest::default()).await.expect_err("refused");
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    assert!(status.message().to_lowercase().contains("connection refused"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_target_is_a_clear_error() {
    let err = LbChannel::builder().build_from_target("nope://x/y").expect_err("unknown scheme");
    assert!(err.is_invalid_target(), "{err:?}");
    let err = LbChannel::builder().build_from_target("static:///not-an-address").expect_err("bad address");
    assert!(err.is_invalid_target(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_vanishing_from_discovery_gets_no_new_calls() {
    let bs = backends(&[0, 0]).await;
    let (tx, rx) = discover::channel();
    let eps: Vec<_> = bs.iter().map(|b| lb_core::Endpoint::new(b.addr)).collect();
    tx.send(lb_core::Update::Reset(eps.clone()));
    let channel = LbChannel::builder().build(Box::pin(rx), "manual").expect("builds");
    wait_healthy(&channel, 2, Duration::from_secs(30)).await;
    tx.send(lb_core::Update::Remove(vec![eps[1].id().clone()]));
    wait_healthy(&channel, 1, Duration::from_secs(30)).await;
    let before = bs[1].served();
    let (per, errors) = support::load(&channel, 200, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(bs[1].served(), before, "removed endpoint got calls: {per:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policy_resends_unavailable_calls_and_only_those() {
    let bs = backends(&[0]).await;
    let channel = LbChannel::builder()
        .retry(RetryPolicy::new(3).codes([tonic::Code::Unavailable]).backoff(Duration::from_millis(1)))
        // Keep the backend in rotation although it fails on purpose.
        .outlier_detection(None)
        .build_from_target(&static_target(&bs))
        .expect("valid target");
    wait_healthy(&channel, 1, Duration::from_secs(30)).await;
    let mut client = EchoClient::new(channel.clone());

    let unavailable = EchoRequest {
        fail_code: tonic::Code::Unavailable as i32,
        ..Default::default()
    };
    let status = client.unary(unavailable).await.expect_err("fails every time");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(bs[0].served(), 3, "three attempts reached the backend");

    let not_found = EchoRequest {
        fail_code: tonic::Code::NotFound as i32,
        ..Default::default()
    };
    let status = client.unary(not_found).await.expect_err("fails");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(bs[0].served(), 4, "a NOT_FOUND answer is not retried");

    let reply = client.unary(EchoRequest { message: "hi".into(), ..Default::default() }).await.expect("ok");
    assert_eq!(reply.into_inner().message, "hi", "the buffered body is sent intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retry_policy_a_failed_call_is_sent_once() {
    let bs = backends(&[0, 0]).await;
    let channel = LbChannel::builder().outlier_detection(None).build_from_target(&static_target(&bs)).expect("valid");
    wait_healthy(&channel, 2, Duration::from_secs(30)).await;
    let req = EchoRequest {
        fail_code: tonic::Code::Unavailable as i32,
        ..Default::default()
    };
    let status = EchoClient::new(channel).unary(req).await.expect_err("fails");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(bs[0].served() + bs[1].served(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_on_a_removed_endpoint_finishes() {
    let bs = backends(&[0]).await;
    let (tx, rx) = discover::channel();
    let ep = lb_core::Endpoint::new(bs[0].addr);
    tx.send(lb_core::Update::Reset(vec![ep.clone()]));
    let channel = LbChannel::builder()
        .endpoint_wait_timeout(Duration::from_millis(100))
        .build(Box::pin(rx), "manual")
        .expect("builds");
    wait_healthy(&channel, 1, Duration::from_secs(30)).await;
    let mut client = EchoClient::new(channel.clone());
    // The server holds this call far longer than the steps below take, even on a loaded machine.
    let slow = EchoRequest { delay_ms: 5_000, ..Default::default() };
    let call = tokio::spawn(async move { client.unary(slow).await });
    eventually("the call is in flight", || channel.endpoints().first().is_some_and(|e| e.in_flight == 1)).await;
    tx.send(lb_core::Update::Remove(vec![ep.id().clone()]));
    wait_healthy(&channel, 0, Duration::from_secs(30)).await;
    // No new calls go to it ...
    let status = EchoClient::new(channel.clone()).unary(EchoRequest::default()).await.expect_err("removed");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(!call.is_finished(), "the call was still in flight when its endpoint was removed");
    // ... while the one in flight finishes normally.
    let reply = call.await.expect("no panic").expect("the in-flight call completes");
    assert_eq!(reply.into_inner().backend, bs[0].addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_server_shutdown_loses_no_calls() {
    let mut bs = Vec::new();
    for _ in 0..3 {
        bs.push(support::GracefulBackend::start(Duration::from_millis(5)).await);
    }
    let target = format!("static:///{}", bs.iter().map(|b| b.addr.to_string()).collect::<Vec<_>>().join(","));
    let channel = LbChannel::builder().policy(RoundRobin::new()).build_from_target(&target).expect("valid target");
    wait_healthy(&channel, 3, Duration::from_secs(30)).await;

    let done = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = EchoClient::new(channel.clone());
        let (done, ok) = (done.clone(), ok.clone());
        tasks.spawn(async move {
            let mut errors = Vec::new();
            while !done.load(Ordering::SeqCst) {
                match client.unary(EchoRequest::default()).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(s) => errors.push(s),
                }
            }
            errors
        });
    }
    eventually("the backend to be shut down serves the load", || bs[2].served.load(Ordering::Relaxed) > 20).await;
    bs[2].shutdown().await;
    let after_shutdown = ok.load(Ordering::Relaxed);
    eventually("load goes on after the shutdown", || ok.load(Ordering::Relaxed) > after_shutdown + 200).await;
    done.store(true, Ordering::SeqCst);
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        errors.extend(r.expect("caller does not panic"));
    }
    assert!(errors.is_empty(), "a graceful shutdown (GOAWAY, in-flight calls finish) must lose no call: {errors:?}");
}

/// Accepts TCP connections and never answers: a host that died without closing its sockets.
async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_notices_a_silent_backend() {
    let (addr, task) = black_hole().await;
    let target = format!("static:///{addr}");
    let ejected = |channel: &LbChannel| channel.endpoints().iter().any(|e| e.phase == EndpointPhase::Ejected);
    // Built first, so it has been connected to the silent peer at least as long as the other.
    let without = LbChannel::builder().build_from_target(&target).expect("valid target");
    eventually("the channel without keep-alive connects", || without.endpoints().iter().any(|e| e.healthy)).await;
    let with = LbChannel::builder()
        .http2_keep_alive(Duration::from_millis(100), Duration::from_millis(100))
        .build_from_target(&target)
        .expect("valid target");
    eventually("keep-alive PINGs go unanswered, so the connection is dropped and the endpoint backed off", || ejected(&with)).await;
    assert!(!ejected(&without), "without keep-alive a silent peer looks connected: {:?}", without.endpoints());
    task.abort();
}
