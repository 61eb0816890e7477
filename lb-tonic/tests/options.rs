//! Builder options end to end: the caller's locality, hash affinity, the request timeout.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use lb_core::discover;
use lb_core::policy::{RingHash, RoundRobin};
use lb_core::{Endpoint, Locality};
use lb_tonic::LbChannel;
use support::lbtest::echo_client::EchoClient;
use support::lbtest::EchoRequest;
use support::{backends, static_target, wait_healthy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_keeps_calls_in_the_callers_zone() {
    let bs = backends(&[0, 0, 0, 0]).await;
    let zone = |i: usize| if i < 2 { "zone-a" } else { "zone-b" };
    let eps = bs
        .iter()
        .enumerate()
        .map(|(i, b)| Endpoint::new(b.addr).with_locality(Locality::unknown().with_region("r").with_zone(zone(i))))
        .collect();
    let channel = LbChannel::builder()
        .policy(RoundRobin::new())
        .locality(Locality::unknown().with_region("r").with_zone("zone-a"))
        .build(discover::fixed(eps), "zoned")
        .expect("builds");
    wait_healthy(&channel, 4, Duration::from_secs(30)).await;
    let (per, errors) = support::load(&channel, 200, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    let expected: BTreeSet<String> = bs[..2].iter().map(|b| b.addr.to_string()).collect();
    assert_eq!(per.keys().cloned().collect::<BTreeSet<_>>(), expected, "only zone-a served: {per:?}");
    assert_eq!(per.values().copied().collect::<Vec<_>>(), vec![100, 100], "round robin inside the zone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_header_pins_a_key_to_one_backend() {
    let bs = backends(&[0, 0, 0, 0]).await;
    let channel = LbChannel::builder()
        .policy(RingHash::new())
        .hash_header("x-user")
        .build_from_target(&static_target(&bs))
        .expect("valid target");
    wait_healthy(&channel, 4, Duration::from_secs(30)).await;
    let mut client = EchoClient::new(channel);
    let mut backends_seen = BTreeSet::new();
    for user in 0..40 {
        let mut per_user = BTreeSet::new();
        for _ in 0..5 {
            let mut req = tonic::Request::new(EchoRequest::default());
            req.metadata_mut().insert("x-user", user.to_string().parse().expect("ascii"));
            per_user.insert(client.unary(req).await.expect("ok").into_inner().backend);
        }
        assert_eq!(per_user.len(), 1, "user {user} stuck to one backend: {per_user:?}");
        backends_seen.extend(per_user);
    }
    assert!(backends_seen.len() >= 3, "40 keys spread over the ring: {backends_seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_is_deadline_exceeded() {
    // The backend would answer after a minute: an error well before that is the timeout's doing.
    let bs = backends(&[60_000]).await;
    let channel = LbChannel::builder()
        .request_timeout(Duration::from_millis(100))
        .build_from_target(&static_target(&bs))
        .expect("valid target");
    wait_healthy(&channel, 1, Duration::from_secs(30)).await;
    let started = tokio::time::Instant::now();
    let status = EchoClient::new(channel.clone()).unary(EchoRequest::default()).await.expect_err("too slow");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(30), "timed out after {took:?}");
    // The abandoned call is no longer counted against the backend.
    assert_eq!(channel.endpoints()[0].in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_names_the_service_instead_of_the_endpoint() {
    let bs = backends(&[0, 0]).await;
    let call = |channel: LbChannel| async move {
        EchoClient::new(channel).unary(EchoRequest { message: "hi".into(), ..Default::default() }).await.expect("call succeeds")
    };
    let plain = LbChannel::builder().policy(RoundRobin::new()).build_from_target(&static_target(&bs)).expect("builds");
    wait_healthy(&plain, 2, Duration::from_secs(30)).await;
    let backend = call(plain.clone()).await.into_inner().backend;
    let seen: Vec<String> = bs.iter().filter_map(|b| b.authorities.lock().expect("lock").last().cloned()).collect();
    assert_eq!(seen, vec![backend], "by default the endpoint's address");

    let named = LbChannel::builder()
        .policy(RoundRobin::new())
        .authority("greeter.default.svc:50051")
        .build_from_target(&static_target(&bs))
        .expect("builds");
    wait_healthy(&named, 2, Duration::from_secs(30)).await;
    for _ in 0..4 {
        call(named.clone()).await;
    }
    for b in &bs {
        let seen = b.authorities.lock().expect("lock").clone();
        assert!(seen.len() >= 2, "round robin reached {}: {seen:?}", b.addr);
        assert!(seen.iter().rev().take(2).all(|a| a == "greeter.default.svc:50051"), "{seen:?}");
    }
    let err = LbChannel::builder()
        .authority("not an authority")
        .build_from_target(&static_target(&bs))
        .expect_err("an invalid authority is refused at build");
    assert!(err.is_config() && err.to_string().contains("not an authority"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_config_sets_the_latency_estimate() {
    let bs = backends(&[0]).await;
    // A day-long τ: the estimate cannot decay measurably while the test runs, however slowly.
    let config = lb_core::load::EwmaConfig { default_rtt: Duration::from_millis(7), decay: Duration::from_secs(86_400) };
    let channel = LbChannel::builder().peak_ewma_config(config).build_from_target(&static_target(&bs)).expect("builds");
    wait_healthy(&channel, 1, Duration::from_secs(30)).await;
    // Before any call the estimate is the configured default.
    let rtt = channel.endpoints()[0].latency_estimate;
    assert!(rtt <= Duration::from_millis(7) && rtt > Duration::from_micros(6_990), "configured: {rtt:?}");
    // Without the option, linkerd's defaults (30 ms, τ 10 s); the estimate only decays from there.
    let defaults = lb_core::load::EwmaConfig::default();
    assert_eq!((defaults.default_rtt, defaults.decay), (Duration::from_millis(30), Duration::from_secs(10)));
    let default = LbChannel::builder().build_from_target(&static_target(&bs)).expect("builds");
    wait_healthy(&default, 1, Duration::from_secs(30)).await;
    let rtt = default.endpoints()[0].latency_estimate;
    assert!(rtt <= Duration::from_millis(30) && rtt > Duration::from_millis(7), "linkerd's 30 ms, not the other channel's 7: {rtt:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_connects_to_a_stable_share_of_the_fleet() {
    let bs = backends(&[0, 0, 0, 0, 0]).await;
    let build = |client: &str| {
        LbChannel::builder()
            .policy(RoundRobin::new())
            .subset(2, client)
            .build_from_target(&static_target(&bs))
            .expect("builds")
    };
    let a = build("pod-a");
    wait_healthy(&a, 2, Duration::from_secs(30)).await;
    let members: BTreeSet<String> = a.endpoints().iter().map(|e| e.endpoint.addr().to_string()).collect();
    assert_eq!(members.len(), 2, "only the subset is connected: {:?}", a.endpoints());
    let all: Vec<Endpoint> = bs.iter().map(|b| Endpoint::new(b.addr)).collect();
    let expected: BTreeSet<String> =
        lb_core::discover::subsetting::choose(&all, 2, b"pod-a").iter().map(|e| e.addr().to_string()).collect();
    assert_eq!(members, expected, "the rendezvous choice for this client id");

    let (per, errors) = support::load(&a, 100, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(per.keys().cloned().collect::<BTreeSet<_>>(), members, "calls stay inside the subset");

    let again = build("pod-a");
    wait_healthy(&again, 2, Duration::from_secs(30)).await;
    let same: BTreeSet<String> = again.endpoints().iter().map(|e| e.endpoint.addr().to_string()).collect();
    assert_eq!(same, members, "the same id gets the same subset");
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    let err = LbChannel::from_target("static:///127.0.0.1:1").expect_err("no Tokio runtime here");
    assert!(err.is_config(), "{err:?}");
    assert!(err.to_string().contains("inside a Tokio runtime"), "names the requirement: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contradictory_options_are_refused_at_build() {
    let target = "static:///127.0.0.1:1";
    let err = LbChannel::builder().tls_server_name("greeter.internal").build_from_target(target).expect_err("no TLS");
    assert!(err.is_config() && err.to_string().contains("without TLS"), "{err}");

    let here = Locality::unknown().with_zone("zone-a");
    let err = LbChannel::builder()
        .policy(lb_core::policy::Topology::new(RoundRobin::new(), here.clone()))
        .locality(here)
        .build_from_target(target)
        .expect_err("topology twice");
    assert!(err.is_config() && err.to_string().contains("already topology-aware"), "{err}");

    let err = LbChannel::builder().hash_header("not a header").build_from_target(target).expect_err("bad name");
    assert!(err.is_config() && err.to_string().contains("not a header"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_clients_take_interceptors_and_tower_stacks() {
    let bs = backends(&[0, 0]).await;
    let channel = LbChannel::builder().build_from_target(&static_target(&bs)).expect("builds");
    assert!(channel.ready(Duration::from_secs(5)).await);

    // An interceptor: tonic's generated constructor asks for a `Default` response body.
    let mut intercepted = EchoClient::with_interceptor(channel.clone(), |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("x-tenant", tonic::metadata::MetadataValue::from_static("blue"));
        Ok(req)
    });
    let reply = intercepted.unary(EchoRequest::default()).await.expect("answered through the interceptor");
    assert!(bs.iter().any(|b| b.addr.to_string() == reply.get_ref().backend));

    // A tower stack around the channel.
    let stacked = tower::ServiceBuilder::new().concurrency_limit(8).service(channel);
    let reply = EchoClient::new(stacked).unary(EchoRequest::default()).await.expect("answered through the stack");
    assert!(bs.iter().any(|b| b.addr.to_string() == reply.get_ref().backend));
}
