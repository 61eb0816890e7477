//! `kubernetes:///…?snapshot=PATH` through `lb_registry::resolve`, with the client inferred from
//! `KUBECONFIG` pointing at the API server double (a double of the EndpointSlice list/watch API: no
//! kube-apiserver can be installed where these tests run): a pod restarted while the API server is
//! unreachable starts with the endpoints it last saw. One test per binary, since it sets a
//! process-wide variable.


use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt as _;
use lb_core::discover::BoxDiscover;
use lb_core::{BoxError, Update};
use lb_doubles::kube::{endpoint, endpoint_slice, KubeDouble};
use lb_registry::Target;

const PATIENCE: Duration = Duration::from_secs(15);

async fn next(discover: &mut BoxDiscover) -> Result<Update, BoxError> {
    tokio::time::timeout(PATIENCE, discover.next()).await.expect("an item in time").expect("the stream stays open")
}

/// Waits for the next full set, passing over errors and confirmations, and returns its addresses.
async fn next_set(discover: &mut BoxDiscover) -> Vec<String> {
    loop {
        if let Ok(Update::Reset(list)) = next(discover).await {
            let mut addrs: Vec<String> = list.iter().map(|e| e.addr().to_string()).collect();
            addrs.sort();
            return addrs;
        }
    }
}

fn slice(ips: &[&str]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    ips.iter()
        .fold(endpoint_slice("greeter-abc", "greeter").port(Some("grpc"), 50051), |s, ip| s.endpoint(endpoint(ip)))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_started_while_the_api_server_is_down_serves_its_snapshot() {
    let double = KubeDouble::start().await.expect("double");
    double.apply(slice(&["10.1.0.1", "10.1.0.2"]));
    let dir = std::env::temp_dir().join(format!("lb-kube-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig.yaml");
    std::fs::write(&kubeconfig, double.kubeconfig()).expect("write the kubeconfig");
    std::env::set_var("KUBECONFIG", &kubeconfig);
    std::env::remove_var("KUBERNETES_SERVICE_HOST");
    let path = dir.join("greeter.json");
    let target = Target::parse(&format!("kubernetes:///greeter.default:grpc?snapshot={}", path.display())).expect("valid");

    // A first run: the set arrives and the client stops at once; the file holds that set.
    let mut first = lb_registry::resolve(&target).expect("a kubernetes target");
    assert_eq!(next_set(&mut first).await, ["10.1.0.1:50051", "10.1.0.2:50051"]);
    drop(first);
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("the snapshot exists")).expect("JSON");
    let mut saved: Vec<SocketAddr> = file["endpoints"]
        .as_array()
        .expect("an endpoint list")
        .iter()
        .map(|e| e["addr"].as_str().expect("an address").parse().expect("ip:port"))
        .collect();
    saved.sort();
    assert_eq!(saved, ["10.1.0.1:50051".parse().expect("literal"), "10.1.0.2:50051".parse().expect("literal")]);

    // The pod restarts while the API server answers 503 to everything (kube's client retries
    // those for minutes before reporting them): the last set is served at once.
    // Meanwhile the service changed, so the file's set and the API server's differ.
    double.set_unavailable(true);
    double.apply(slice(&["10.1.0.2", "10.1.0.3"]));
    let mut restarted = lb_registry::resolve(&target).expect("a kubernetes target");
    assert_eq!(next_set(&mut restarted).await, ["10.1.0.1:50051", "10.1.0.2:50051"], "the snapshot's set, at once");

    // The API server comes back: its word replaces the file's.
    double.set_unavailable(false);
    assert_eq!(next_set(&mut restarted).await, ["10.1.0.2:50051", "10.1.0.3:50051"]);
    drop(restarted);
    let _ = std::fs::remove_dir_all(&dir);
}
