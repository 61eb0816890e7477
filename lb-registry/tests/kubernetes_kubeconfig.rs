//! `lb_registry::resolve("kubernetes:///…")` with the client inferred from `KUBECONFIG`, created
//! lazily inside the stream: while no configuration works the stream reports errors (and the
//! consumer keeps waiting), and once `KUBECONFIG` names a readable file pointing at the API server
//! double — over HTTPS, with the kubeconfig's CA file and bearer token, as a real cluster is
//! reached — endpoints arrive. One test per binary, since it sets a process-wide variable.


mod kubernetes_support;

use std::time::Duration;

use futures_util::StreamExt as _;
use kubernetes_support::TestCa;
use lb_core::{EndpointState, Locality, Update};
use lb_doubles::kube::{endpoint, endpoint_slice, DoubleConfig, KubeDouble};
use lb_registry::Target;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_uri_with_kubeconfig_and_a_lazily_created_client() {
    let ca = TestCa::new();
    let config = DoubleConfig { bearer_token: Some("kubeconfig-token".into()), ..DoubleConfig::default() };
    let double = KubeDouble::start_tls(config, ca.server_config()).await.expect("double");
    double.apply(
        endpoint_slice("greeter-abc", "greeter")
            .port(Some("grpc"), 50051)
            .endpoint(endpoint("10.1.0.1").zone("z1").node("n1"))
            .endpoint(endpoint("10.1.0.2").zone("z2").node("n2").terminating_but_serving())
            .build(),
    );
    let path = std::env::temp_dir().join(format!("lb-kubeconfig-{}.yaml", std::process::id()));
    let _ = std::fs::remove_file(&path);
    std::env::set_var("KUBECONFIG", &path);
    std::env::remove_var("KUBERNETES_SERVICE_HOST");

    // The namespace comes from the kubeconfig's context (`default`), the port by name.
    let target = Target::parse("kubernetes:///greeter:grpc?zone=z1").expect("valid target");
    let mut discover = lb_registry::resolve(&target).expect("a kubernetes target");

    let first = tokio::time::timeout(Duration::from_secs(10), discover.next())
        .await
        .expect("an item in time")
        .expect("the stream does not end");
    let err = first.expect_err("no kubeconfig yet: an error on the stream, not a panic or a hang");
    assert!(!err.to_string().is_empty());

    std::fs::write(&path, double.kubeconfig_with(Some("kubeconfig-token"), Some(&ca.file))).expect("write the kubeconfig");
    let update = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match discover.next().await {
                Some(Ok(u)) => return u,
                Some(Err(_)) => continue, // retried with backoff until the file is read
                None => panic!("the stream ended"),
            }
        }
    })
    .await
    .expect("endpoints once the kubeconfig exists");
    let _ = std::fs::remove_file(&path);
    assert_eq!(double.auth_failures(), 0, "every request carried the kubeconfig's token");

    // An API server outage reaches the stream as errors at once: the inferred client leaves 503s to
    // the watcher's backoff, which reports each one, instead of kube's retry layer, which would
    // retry them silently for minutes.
    double.set_unavailable(true);
    let during = tokio::time::timeout(Duration::from_secs(30), discover.next()).await.expect("the outage is reported").expect("open");
    let message = during.expect_err("a 503 is an error on the stream").to_string();
    assert!(message.contains("503") || message.contains("unavailable"), "{message}");
    double.set_unavailable(false);

    let Update::Reset(mut eps) = update else { panic!("the first update is a full set: {update:?}") };
    eps.sort_by_key(|e| e.addr());
    let got: Vec<(String, EndpointState, Locality)> =
        eps.iter().map(|e| (e.addr().to_string(), e.state(), e.locality().clone())).collect();
    assert_eq!(
        got,
        vec![
            ("10.1.0.1:50051".to_string(), EndpointState::Ready, Locality::unknown().with_zone("z1").with_node("n1")),
            ("10.1.0.2:50051".to_string(), EndpointState::Serving, Locality::unknown().with_zone("z2").with_node("n2")),
        ]
    );
}
