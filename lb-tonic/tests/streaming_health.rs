//! Load accounting of server streams, and health-check-driven ejection and return.

mod support;

use std::time::Duration;

use lb_core::policy::RoundRobin;
use lb_tonic::LbChannel;
use support::lbtest::echo_client::EchoClient;
use support::lbtest::EchoRequest;
use support::{backends, static_target, wait_healthy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_server_stream_counts_as_in_flight_until_it_ends() {
    let bs = backends(&[0]).await;
    let channel = LbChannel::builder().build_from_target(&static_target(&bs)).expect("valid target");
    wait_healthy(&channel, 1, Duration::from_secs(30)).await;
    let in_flight = || channel.endpoints()[0].in_flight;

    let mut client = EchoClient::new(channel.clone());
    let req = EchoRequest {
        count: 3,
        delay_ms: 150,
        ..Default::default()
    };
    let mut stream = client.server_stream(req).await.expect("stream opens").into_inner();
    assert_eq!(in_flight(), 1, "counted once the headers arrived");
    let first = stream.message().await.expect("ok").expect("a first message");
    assert_eq!(first.message, "0");
    assert_eq!(in_flight(), 1, "still counted between messages");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(in_flight(), 1, "still counted while the server is idle mid-stream");
    while stream.message().await.expect("ok").is_some() {}
    assert_eq!(in_flight(), 0, "released at the end of the stream");

    // A stream the caller drops half-way is released too.
    let req = EchoRequest {
        count: 100,
        delay_ms: 50,
        ..Default::default()
    };
    let mut stream = client.server_stream(req).await.expect("stream opens").into_inner();
    stream.message().await.expect("ok").expect("a first message");
    assert_eq!(in_flight(), 1);
    drop(stream);
    assert_eq!(in_flight(), 0, "released when the caller drops the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_steer_least_request_away() {
    // Two backends; keep 3 long streams open on whichever backend they land, then send unary calls:
    // least-request P2C must prefer the backend with fewer open streams.
    let bs = backends(&[0, 0]).await;
    let channel = LbChannel::builder()
        .policy(lb_core::policy::P2c::least_request())
        .build_from_target(&static_target(&bs))
        .expect("valid target");
    wait_healthy(&channel, 2, Duration::from_secs(30)).await;
    let mut client = EchoClient::new(channel.clone());
    let mut streams = Vec::new();
    for _ in 0..4 {
        let req = EchoRequest {
            count: 1000,
            delay_ms: 100,
            ..Default::default()
        };
        let mut s = client.server_stream(req).await.expect("opens").into_inner();
        s.message().await.expect("ok").expect("first");
        streams.push(s);
    }
    let loads: Vec<u32> = channel.endpoints().iter().map(|e| e.in_flight).collect();
    assert_eq!(loads.iter().sum::<u32>(), 4, "four open streams counted: {loads:?}");
    assert!(loads.iter().all(|l| *l == 2), "P2C least-request spread the streams 2/2: {loads:?}");
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_eject_not_serving_and_return_serving() {
    let bs = backends(&[0, 0]).await;
    let channel = LbChannel::builder()
        .policy(RoundRobin::new())
        .health_check(true)
        .build_from_target(&static_target(&bs))
        .expect("valid target");
    wait_healthy(&channel, 2, Duration::from_secs(30)).await;

    bs[1].set_serving(false).await;
    wait_healthy(&channel, 1, Duration::from_secs(30)).await;
    let before = bs[1].served();
    let (per, errors) = support::load(&channel, 100, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(bs[1].served(), before, "a NOT_SERVING backend gets no calls: {per:?}");

    bs[1].set_serving(true).await;
    wait_healthy(&channel, 2, Duration::from_secs(30)).await;
    let (per, errors) = support::load(&channel, 100, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(per.get(&bs[1].addr.to_string()).copied(), Some(50), "back in rotation: {per:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_health_checks_an_endpoint_waits_for_its_first_serving() {
    let bs = backends(&[0]).await;
    bs[0].set_serving(false).await;
    let channel = LbChannel::builder()
        .health_check(true)
        .endpoint_wait_timeout(Duration::from_millis(200))
        .build_from_target(&static_target(&bs))
        .expect("valid target");
    assert!(!channel.ready(Duration::from_millis(300)).await, "not ready while NOT_SERVING");
    let status = EchoClient::new(channel.clone()).unary(EchoRequest::default()).await.expect_err("no endpoint");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    bs[0].set_serving(true).await;
    assert!(channel.ready(Duration::from_secs(2)).await);
    EchoClient::new(channel).unary(EchoRequest::default()).await.expect("served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_health_service_counts_as_serving() {
    // gRFC A17: UNIMPLEMENTED from Health/Watch means "no health checking here", not "unhealthy".
    let backend = support::GracefulBackend::start(Duration::ZERO).await;
    let channel = LbChannel::builder()
        .health_check(true)
        .build_from_target(&format!("static:///{}", backend.addr))
        .expect("valid target");
    assert!(channel.ready(Duration::from_secs(5)).await, "{:?}", channel.endpoints());
    EchoClient::new(channel).unary(EchoRequest::default()).await.expect("served");
}
