//! The Kubernetes API's authentication and authorization, against the API server double (a double:
//! no kube-apiserver can be installed where these tests run) serving HTTPS with an rcgen
//! certificate and checking bearer tokens as the API server does: a TLS API server reached with
//! the CA and token of a kubeconfig, a rejected token (401), an identity RBAC grants nothing (403)
//! and one it grants `list` but not `watch`, each reported as what to fix rather than kube's raw
//! error.


mod kubernetes_support;

use std::time::Duration;

use futures_util::StreamExt as _;
use kubernetes_support::{client_from_kubeconfig, TestCa, SERVICE};
use lb_core::policy::RoundRobin;
use lb_core::test_recorder;
use lb_core::test_util::TestConnector;
use lb_core::{PickContext, Pool, PoolConfig, Update};
use lb_doubles::kube::{endpoint, endpoint_slice, DoubleConfig, KubeDouble};
use lb_registry::kubernetes::KubernetesResolver;

const TOKEN: &str = "lb-test-token-0123456789";
const PATIENCE: Duration = Duration::from_secs(15);

async fn tls_double(ca: &TestCa) -> KubeDouble {
    let double = KubeDouble::start_tls(
        DoubleConfig {
            bearer_token: Some(TOKEN.into()),
            forbidden_tokens: vec!["token-without-rbac".into()],
            list_only_tokens: vec!["token-list-only".into()],
            ..DoubleConfig::default()
        },
        ca.server_config(),
    )
    .await
    .expect("start the API server double");
    double.apply(endpoint_slice("greeter-abc", "greeter").port(Some("grpc"), 50051).endpoint(endpoint("10.1.0.1")).build());
    double
}

async fn resolver(double: &KubeDouble, ca: &TestCa, token: Option<&str>) -> KubernetesResolver {
    let client = client_from_kubeconfig(&double.kubeconfig_with(token, Some(&ca.file))).await;
    KubernetesResolver::builder()
        .client(client)
        .ignore_env()
        .watch_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_api_server_is_watched_with_the_kubeconfig_ca_and_token() {
    let ca = TestCa::new();
    let double = tls_double(&ca).await;
    assert!(double.url().starts_with("https://"));
    let mut discover = resolver(&double, &ca, Some(TOKEN)).await.watch(SERVICE).expect("valid service");
    let first = tokio::time::timeout(PATIENCE, discover.next()).await.expect("an answer").expect("open");
    let Ok(Update::Reset(list)) = first else { panic!("a full set first, got {first:?}") };
    assert_eq!(list.iter().map(|e| e.addr().to_string()).collect::<Vec<_>>(), vec!["10.1.0.1:50051"]);
    assert_eq!(double.auth_failures(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_a_401_error_saying_what_to_fix_and_requests_quote_it() {
    test_recorder::install();
    let ca = TestCa::new();
    let double = tls_double(&ca).await;
    let before = test_recorder::recorded().counter("lb_registry_auth_errors_total", &[("registry", "kubernetes"), ("reason", "unauthorized")]);
    for token in [None, Some("expired-token")] {
        let mut discover = resolver(&double, &ca, token).await.watch(SERVICE).expect("valid service");
        let first = tokio::time::timeout(PATIENCE, discover.next()).await.expect("an answer").expect("open");
        let message = first.expect_err("refused credentials are an error").to_string();
        assert!(message.contains("401 Unauthorized") && message.contains("`greeter` in namespace `default`"), "{token:?}: {message}");
        assert!(message.contains("bearer token"), "says what to fix: {message}");
    }
    assert!(double.auth_failures() >= 2);
    let counted = test_recorder::recorded().counter("lb_registry_auth_errors_total", &[("registry", "kubernetes"), ("reason", "unauthorized")]);
    assert!(counted >= before + 2, "counted: {before} -> {counted}");

    // A client with that token fails its requests with the cause, and never serves a set.
    let discover = resolver(&double, &ca, Some("expired-token")).await.watch(SERVICE).expect("valid service");
    let pool = Pool::spawn(discover, TestConnector::new(), RoundRobin::new(), PoolConfig::new("kubernetes:///greeter.default:grpc"));
    let mut versions = pool.subscribe();
    tokio::time::timeout(PATIENCE, versions.wait_for(|_| pool.snapshot().discovery_error().is_some()))
        .await
        .expect("the pool hears of the error")
        .expect("the pool runs");
    let wait = lb_core::balance::Wait { timeout: Duration::from_millis(50), wait_for_ready: false };
    let err = pool.pick_or_wait(PickContext::default(), wait).await.expect_err("nothing to pick");
    assert!(err.to_string().contains("discovery error: the Kubernetes API server refused lb's credentials (401"), "{err}");
    assert!(!pool.is_initialized());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_without_rbac_is_a_403_error_naming_the_permission() {
    let ca = TestCa::new();
    let double = tls_double(&ca).await;
    let mut discover = resolver(&double, &ca, Some("token-without-rbac")).await.watch(SERVICE).expect("valid service");
    let first = tokio::time::timeout(PATIENCE, discover.next()).await.expect("an answer").expect("open");
    let message = first.expect_err("RBAC refuses the list").to_string();
    assert!(message.contains("403 Forbidden"), "{message}");
    assert!(message.contains("`list` and `watch` on `endpointslices` in API group `discovery.k8s.io`"), "what to grant: {message}");
    assert!(message.contains("cannot list resource \"endpointslices\""), "the server's own words: {message}");
}

/// A Role missing `watch` (an easy slip): the list answers, so the set is served, and every watch
/// is refused. lb reports the 403 with what to grant, and keeps serving the listed set, instead of
/// serving a set that can never change without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_that_may_list_but_not_watch_serves_the_list_and_reports_the_refused_watch() {
    test_recorder::install();
    let ca = TestCa::new();
    let double = tls_double(&ca).await;
    let forbidden = || test_recorder::recorded().counter("lb_registry_auth_errors_total", &[("registry", "kubernetes"), ("reason", "forbidden")]);
    let before = forbidden();
    let mut discover = resolver(&double, &ca, Some("token-list-only")).await.watch(SERVICE).expect("valid service");
    let first = tokio::time::timeout(PATIENCE, discover.next()).await.expect("an answer").expect("open");
    let Ok(Update::Reset(list)) = first else { panic!("the list answers: a full set first, got {first:?}") };
    assert_eq!(list.iter().map(|e| e.addr().to_string()).collect::<Vec<_>>(), vec!["10.1.0.1:50051"]);
    let second = tokio::time::timeout(PATIENCE, discover.next()).await.expect("an answer").expect("open");
    let message = second.expect_err("the watch is refused").to_string();
    assert!(message.contains("403 Forbidden") && message.contains("`list` and `watch`"), "what to grant: {message}");
    assert!(message.contains("cannot watch resource \"endpointslices\""), "the server's own words: {message}");
    assert!(forbidden() > before, "counted as an auth error");

    // A client keeps the listed set and says why it may be stale.
    let discover = resolver(&double, &ca, Some("token-list-only")).await.watch(SERVICE).expect("valid service");
    let pool = Pool::spawn(discover, TestConnector::new(), RoundRobin::new(), PoolConfig::new("kubernetes-list-only"));
    let mut versions = pool.subscribe();
    tokio::time::timeout(PATIENCE, versions.wait_for(|_| pool.snapshot().discovery_error().is_some_and(|e| e.contains("cannot watch"))))
        .await
        .expect("the pool hears of the refused watch")
        .expect("the pool runs");
    let picked = pool.pick(&PickContext::default()).expect("the listed endpoint is served");
    assert_eq!(picked.connection.to_string(), "10.1.0.1:50051");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused() {
    let (ca, other) = (TestCa::new(), TestCa::new());
    let double = tls_double(&ca).await;
    let mut discover = resolver(&double, &other, Some(TOKEN)).await.watch(SERVICE).expect("valid service");
    let first = tokio::time::timeout(PATIENCE, discover.next()).await.expect("an answer").expect("open");
    let message = first.expect_err("an untrusted server").to_string();
    assert!(!message.contains("401") && !message.contains("403"), "a TLS failure, not an auth answer: {message}");
    assert_eq!(double.auth_failures(), 0, "no request got through the handshake");
    assert_eq!(double.list_requests(), 0);
}
