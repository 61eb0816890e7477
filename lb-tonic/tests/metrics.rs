//! The metrics an `LbChannel` records (lb_core::metrics), read from a test recorder after real
//! calls through real tonic servers on loopback: successes, a failing endpoint's errors, reroutes
//! of refused streams, an ejection, calls that find no endpoint, and the endpoint label only when
//! asked for. Each test names its own target (`static:///…#name` is not a thing, so the pool's
//! name is given through `build`): the recorder is shared by the tests of this binary.

mod support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use lb_core::metrics::{
    ATTEMPTS_STARTED, ATTEMPT_DURATION, CALL_DURATION, EJECTIONS, ENDPOINT_IN_FLIGHT, ENDPOINT_LATENCY, ENDPOINT_PHASE,
    ENDPOINT_PICKS, NO_ENDPOINT, REROUTES,
};
use lb_core::policy::RoundRobin;
use lb_core::test_recorder::{self, Recorded};
use lb_tonic::LbChannel;
use support::lbtest::echo_client::EchoClient;
use support::lbtest::echo_server::{Echo, EchoServer};
use support::lbtest::{EchoReply, EchoRequest};
use support::{wait_healthy, Backend};
use tokio::net::TcpListener;
use tonic::{Code, Request, Response, Status};

const WAIT: Duration = Duration::from_secs(10);

/// A channel over `addrs` whose pool (and so every series) is named `name`.
fn channel(name: &str, addrs: &[SocketAddr], builder: lb_tonic::Builder) -> LbChannel {
    test_recorder::install();
    let eps = addrs.iter().map(|a| lb_core::Endpoint::new(*a)).collect();
    builder
        .policy(RoundRobin::new())
        .build(lb_core::discover::fixed(eps), name)
        .expect("a valid channel")
}

async fn call(channel: &LbChannel, req: EchoRequest) -> Result<EchoReply, Status> {
    EchoClient::new(channel.clone()).unary(req).await.map(Response::into_inner)
}

fn target(name: &str) -> [(&str, &str); 1] {
    [("grpc.target", name)]
}

fn with_status<'a>(name: &'a str, status: &'a str) -> [(&'a str, &'a str); 2] {
    [("grpc.target", name), ("grpc.status", status)]
}

/// A gRPC server that fails every unary call with `UNAVAILABLE`.
#[derive(Clone)]
struct Failing;

type ReplyStream = Pin<Box<dyn futures_util::Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Failing {
    async fn unary(&self, _: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Err(Status::unavailable("this backend always fails"))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(&self, _: Request<EchoRequest>) -> Result<Response<ReplyStream>, Status> {
        Err(Status::unimplemented("not used"))
    }
}

async fn failing_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(tonic::transport::Server::builder().add_service(EchoServer::new(Failing)).serve_with_incoming(incoming));
    addr
}

/// An HTTP/2 server that refuses every stream unprocessed (`REFUSED_STREAM`), as an overloaded
/// server does: the engine re-sends each such call elsewhere.
async fn refusing_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else { return };
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    addr
}

fn assert_no_endpoint_label(seen: &Recorded, name: &str) {
    for metric in [ATTEMPTS_STARTED, ATTEMPT_DURATION] {
        let series = seen.series(metric, &target(name));
        assert!(!series.is_empty(), "{metric} recorded");
        assert!(series.iter().all(|l| !l.contains_key("lb.endpoint")), "{metric} per endpoint by default: {series:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_calls_are_attempts_and_calls_by_target_and_picks_by_endpoint() {
    let name = "metrics-success";
    let backends = [Backend::start(Duration::ZERO).await, Backend::start(Duration::ZERO).await];
    let addrs = [backends[0].addr, backends[1].addr];
    let ch = channel(name, &addrs, LbChannel::builder());
    wait_healthy(&ch, 2, WAIT).await;
    for _ in 0..10 {
        call(&ch, EchoRequest::default()).await.expect("the call succeeds");
    }
    let seen = test_recorder::recorded();
    assert_eq!(seen.counter(ATTEMPTS_STARTED, &target(name)), 10);
    assert_eq!(seen.histogram_count(ATTEMPT_DURATION, &with_status(name, "OK")), 10);
    assert_eq!(seen.histogram_count(CALL_DURATION, &with_status(name, "OK")), 10);
    assert_eq!(seen.series(CALL_DURATION, &target(name)).len(), 1, "only OK calls");
    let samples = seen.samples(CALL_DURATION, &target(name));
    assert!(samples.iter().all(|s| *s > 0.0 && *s < WAIT.as_secs_f64()), "seconds: {samples:?}");
    assert_no_endpoint_label(&seen, name);
    for addr in addrs {
        let endpoint = addr.to_string();
        let labels = [("target", name), ("endpoint", endpoint.as_str())];
        assert_eq!(seen.counter(ENDPOINT_PICKS, &labels), 5, "round robin: 5 picks of {endpoint}");
        let ready = [("target", name), ("endpoint", endpoint.as_str()), ("phase", "ready")];
        assert_eq!(seen.gauge(ENDPOINT_PHASE, &ready), Some(1.0), "{endpoint} is ready");
        let ejected = [("target", name), ("endpoint", endpoint.as_str()), ("phase", "ejected")];
        assert_ne!(seen.gauge(ENDPOINT_PHASE, &ejected), Some(1.0));
        assert!(seen.gauge(ENDPOINT_IN_FLIGHT, &labels).is_some(), "in flight sampled at publication");
        assert!(seen.gauge(ENDPOINT_LATENCY, &labels).is_some_and(|s| s > 0.0), "the PeakEWMA estimate");
    }
    assert_eq!(seen.counter(REROUTES, &[("target", name)]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_shows_in_the_status_and_an_ejection() {
    let name = "metrics-failing";
    let healthy = Backend::start(Duration::ZERO).await;
    let failing = failing_backend().await;
    let ch = channel(name, &[healthy.addr, failing], LbChannel::builder());
    wait_healthy(&ch, 2, WAIT).await;
    // Round robin alternates; the failing endpoint's fifth failure in a row ejects it.
    let mut published = ch.client().pool().subscribe();
    let (mut ok, mut failed) = (0, 0);
    while failed < 5 {
        match call(&ch, EchoRequest::default()).await {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                failed += 1;
            }
        }
    }
    while !ch.endpoints().iter().any(|e| e.phase == lb_core::pool::EndpointPhase::Ejected) {
        tokio::time::timeout(WAIT, published.changed())
            .await
            .expect("ejected after the fifth consecutive failure")
            .expect("the pool runs");
    }
    let seen = test_recorder::recorded();
    assert_eq!(seen.histogram_count(ATTEMPT_DURATION, &with_status(name, "UNAVAILABLE")), failed);
    assert_eq!(seen.histogram_count(CALL_DURATION, &with_status(name, "UNAVAILABLE")), failed);
    assert_eq!(seen.histogram_count(CALL_DURATION, &with_status(name, "OK")), ok);
    assert_eq!(seen.counter(EJECTIONS, &[("target", name)]), 1);
    let endpoint = failing.to_string();
    let ejected = [("target", name), ("endpoint", endpoint.as_str()), ("phase", "ejected")];
    assert_eq!(seen.gauge(ENDPOINT_PHASE, &ejected), Some(1.0), "the failing endpoint reads ejected");
    let ready = [("target", name), ("endpoint", endpoint.as_str()), ("phase", "ready")];
    assert_eq!(seen.gauge(ENDPOINT_PHASE, &ready), Some(0.0), "and no longer ready");
    // Once ejected, every call goes to the healthy endpoint.
    call(&ch, EchoRequest::default()).await.expect("the healthy endpoint answers");
    let picks = test_recorder::recorded().counter(ENDPOINT_PICKS, &[("target", name), ("endpoint", endpoint.as_str())]);
    assert_eq!(picks, failed as u64, "no pick of the ejected endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_rerouted_attempts_of_one_call() {
    let name = "metrics-reroute";
    let healthy = Backend::start(Duration::ZERO).await;
    let refusing = refusing_backend().await;
    let ch = channel(name, &[refusing, healthy.addr], LbChannel::builder());
    wait_healthy(&ch, 2, WAIT).await;
    for _ in 0..10 {
        let reply = call(&ch, EchoRequest::default()).await.expect("a refused stream is re-sent elsewhere");
        assert_eq!(reply.backend, healthy.addr.to_string());
    }
    let seen = test_recorder::recorded();
    let reroutes = seen.counter(REROUTES, &[("target", name)]);
    assert!(reroutes >= 1, "round robin sent some calls to the refusing endpoint first");
    assert_eq!(seen.histogram_count(CALL_DURATION, &with_status(name, "OK")), 10, "10 calls");
    assert_eq!(seen.counter(ATTEMPTS_STARTED, &target(name)), 10 + reroutes, "each reroute is one more attempt");
    assert_eq!(seen.histogram_count(ATTEMPT_DURATION, &with_status(name, "OK")), 10);
    assert_eq!(
        seen.histogram_count(ATTEMPT_DURATION, &with_status(name, "UNAVAILABLE")) as u64,
        reroutes,
        "a refused attempt reads UNAVAILABLE, as a transparent retry's does in gRPC"
    );
    let refusing = refusing.to_string();
    let picks = seen.counter(ENDPOINT_PICKS, &[("target", name), ("endpoint", refusing.as_str())]);
    assert_eq!(picks, reroutes, "every pick of the refusing endpoint was rerouted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_an_endpoint_are_unavailable_calls_without_attempts() {
    let name = "metrics-no-endpoint";
    // A port nothing listens on: the connection is refused, so calls fail at once.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("bound");
    let ch = channel(name, &[closed], LbChannel::builder().endpoint_wait_timeout(Duration::from_millis(200)));
    let mut unavailable = 0;
    for _ in 0..3 {
        let err = call(&ch, EchoRequest::default()).await.expect_err("no endpoint can take it");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        unavailable += 1;
    }
    let seen = test_recorder::recorded();
    assert_eq!(seen.counter(NO_ENDPOINT, &[("target", name)]), unavailable);
    assert_eq!(seen.histogram_count(CALL_DURATION, &with_status(name, "UNAVAILABLE")) as u64, unavailable);
    assert_eq!(seen.counter(ATTEMPTS_STARTED, &target(name)), 0, "nothing was sent");
    assert_eq!(seen.histogram_count(ATTEMPT_DURATION, &target(name)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_labels_only_when_enabled() {
    let name = "metrics-endpoint-labels";
    let backends = [Backend::start(Duration::ZERO).await, Backend::start(Duration::ZERO).await];
    let addrs = [backends[0].addr, backends[1].addr];
    let ch = channel(name, &addrs, LbChannel::builder().metrics_endpoint_labels(true));
    wait_healthy(&ch, 2, WAIT).await;
    for _ in 0..4 {
        call(&ch, EchoRequest::default()).await.expect("the call succeeds");
    }
    let seen = test_recorder::recorded();
    for addr in addrs {
        let endpoint = addr.to_string();
        let labels = [("grpc.target", name), ("lb.endpoint", endpoint.as_str())];
        assert_eq!(seen.counter(ATTEMPTS_STARTED, &labels), 2, "{endpoint}");
        let labels = [("grpc.target", name), ("lb.endpoint", endpoint.as_str()), ("grpc.status", "OK")];
        assert_eq!(seen.histogram_count(ATTEMPT_DURATION, &labels), 2, "{endpoint}");
    }
    let calls = seen.series(CALL_DURATION, &target(name));
    assert!(calls.iter().all(|l| !l.contains_key("lb.endpoint")), "a call is not one endpoint's: {calls:?}");
    assert_eq!(seen.histogram_count(CALL_DURATION, &with_status(name, "OK")), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_request_timeout_reads_deadline_exceeded() {
    let name = "metrics-deadline";
    let slow = Backend::start(Duration::from_secs(5)).await;
    let ch = channel(name, &[slow.addr], LbChannel::builder().request_timeout(Duration::from_millis(100)));
    wait_healthy(&ch, 1, WAIT).await;
    let err = call(&ch, EchoRequest::default()).await.expect_err("times out");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let seen = test_recorder::recorded();
    assert_eq!(seen.histogram_count(CALL_DURATION, &with_status(name, "DEADLINE_EXCEEDED")), 1);
    assert_eq!(seen.histogram_count(ATTEMPT_DURATION, &with_status(name, "DEADLINE_EXCEEDED")), 1);
    let took = seen.samples(CALL_DURATION, &target(name));
    assert!(took.iter().all(|s| (0.1..5.0).contains(s)), "about the timeout: {took:?}");
}
