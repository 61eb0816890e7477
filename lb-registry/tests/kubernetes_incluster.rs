//! `kubernetes:///…` from inside a pod: no kubeconfig, so the client comes from the in-cluster
//! configuration — `KUBERNETES_SERVICE_HOST`/`_PORT` and the service account's token, CA and
//! namespace under `/var/run/secrets/kubernetes.io/serviceaccount/`, paths kube-client fixes.
//!
//! The test builds that pod's view without touching the host: a child process runs in its own
//! mount namespace (`unshare --mount`, which needs root) with a tmpfs over `/run` holding the
//! service account files, and resolves against the API server double (a double, not the API
//! server) serving HTTPS with that CA and checking that token. Without root the test says it
//! skipped; as root (CI) a failure to build the namespace fails it.


mod kubernetes_support;

use std::time::Duration;

use futures_util::StreamExt as _;
use kubernetes_support::TestCa;
use lb_core::Update;
use lb_doubles::kube::{endpoint, endpoint_slice, DoubleConfig, KubeDouble};

const CHILD: &str = "LB_TEST_INCLUSTER_CHILD";
const TOKEN: &str = "service-account-token-0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_resolves_with_its_service_account() {
    if !is_root() {
        lb_core::test_util::skip("not root: a mount namespace for the service account files needs root");
        return;
    }
    let ca = TestCa::new();
    let double = KubeDouble::start_tls(DoubleConfig { bearer_token: Some(TOKEN.into()), ..DoubleConfig::default() }, ca.server_config())
        .await
        .expect("start the API server double");
    // The namespace comes from the service account's namespace file, not from the target.
    double.apply(
        endpoint_slice("greeter-abc", "greeter").namespace("team-a").port(Some("grpc"), 50051).endpoint(endpoint("10.3.0.7")).build(),
    );
    let home = std::env::temp_dir().join(format!("lb-incluster-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).expect("an empty HOME, so no ~/.kube/config is found");
    let sa = "/run/secrets/kubernetes.io/serviceaccount";
    let script = format!(
        "set -e; mount -t tmpfs lb-test-run /run; mkdir -p {sa}; cp \"$LB_CA\" {sa}/ca.crt; \
         printf %s \"$LB_TOKEN\" > {sa}/token; printf team-a > {sa}/namespace; \
         exec \"$0\" --ignored --exact pod_child --nocapture --test-threads=1"
    );
    let exe = std::env::current_exe().expect("the test binary");
    let out = tokio::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(&exe)
        .env(CHILD, "1")
        .env("LB_CA", &ca.file)
        .env("LB_TOKEN", TOKEN)
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", double.addr().port().to_string())
        .env("HOME", &home)
        .env_remove("KUBECONFIG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("the child finishes").expect("run unshare");
    let _ = std::fs::remove_dir_all(&home);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the pod child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("test pod_child ... ok") && stdout.contains("1 passed"), "the child test ran:\n{stdout}");
    assert!(double.list_requests() >= 1 && double.auth_failures() == 0, "the child listed with the service account's token");
}

/// The pod: run by `a_pod_resolves_with_its_service_account` inside its mount namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of a_pod_resolves_with_its_service_account"]
async fn pod_child() {
    assert!(std::env::var_os(CHILD).is_some(), "pod_child runs only as the child of a_pod_resolves_with_its_service_account");
    let target = lb_registry::Target::parse("kubernetes:///greeter:grpc").expect("valid target");
    let mut discover = lb_registry::resolve(&target).expect("a kubernetes target");
    let first = tokio::time::timeout(Duration::from_secs(20), discover.next()).await.expect("an answer").expect("open");
    let Ok(Update::Reset(list)) = first else { panic!("a full set from the in-cluster client, got {first:?}") };
    assert_eq!(list.iter().map(|e| e.addr().to_string()).collect::<Vec<_>>(), vec!["10.3.0.7:50051"]);
}

fn is_root() -> bool {
    // `id -u` rather than a libc call: this crate's tests use no unsafe code and no libc binding.
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
