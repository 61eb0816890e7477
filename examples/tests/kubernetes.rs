//! `greeter-client --target kubernetes:///greeter.default:grpc` against the in-repo Kubernetes API
//! server *double* (lb-doubles; no kube-apiserver can be installed on the test machines), with the
//! client finding the double through a `KUBECONFIG` the test writes — the same path a program
//! outside the cluster takes. The double runs inside the test process so the test can change the
//! EndpointSlices between runs; `kube-double` is the same double as a binary.

mod support;

use std::process::Command;

use lb_doubles::kube::{endpoint, endpoint_slice, EndpointBuilder, KubeDouble};
use lb_examples::load::Report;
use support::Server;

fn client(kubeconfig: &std::path::Path, args: &[&str]) -> Report {
    let out = Command::new(env!("CARGO_BIN_EXE_greeter-client"))
        .args(["--target", "kubernetes:///greeter.default:grpc", "--requests", "200", "--concurrency", "4", "--policy", "rr"])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .output()
        .expect("greeter-client runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "greeter-client failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

#[test]
fn greeter_client_discovers_through_endpointslices() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let double = rt.block_on(KubeDouble::start()).expect("start the Kubernetes API server double");
    let a = Server::start(&["--zone", "a"]);
    let b = Server::start(&["--zone", "b"]);
    // Both pods run on 127.0.0.1, so each gets its own slice with its own port number for the
    // `grpc` service port (as during a rollout that changes the container port).
    let publish = |a_ep: EndpointBuilder, b_ep: EndpointBuilder| {
        double.apply(endpoint_slice("greeter-a", "greeter").port(Some("grpc"), a.addr.port()).endpoint(a_ep).build());
        double.apply(endpoint_slice("greeter-b", "greeter").port(Some("grpc"), b.addr.port()).endpoint(b_ep).build());
    };
    publish(endpoint("127.0.0.1").zone("a").node("n1"), endpoint("127.0.0.1").zone("b").node("n2"));
    let kubeconfig = std::env::temp_dir().join(format!("lb-examples-kubeconfig-{}.yaml", std::process::id()));
    std::fs::write(&kubeconfig, double.kubeconfig()).expect("write the kubeconfig");
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());

    let r = client(&kubeconfig, &[]);
    assert_eq!(r.errors, 0, "{r:?}");
    for backend in [&a_addr, &b_addr] {
        assert!((r.share(backend) - 0.5).abs() <= 0.05, "{backend}: {r:?}");
    }

    // Zones come from the EndpointSlices: a caller in zone b stays there.
    let r = client(&kubeconfig, &["--zone", "b"]);
    assert_eq!((r.errors, r.share(&b_addr)), (0, 1.0), "{r:?}");

    // Pod a is terminating (still serving), b is ready: only b gets requests.
    publish(endpoint("127.0.0.1").zone("a").terminating_but_serving(), endpoint("127.0.0.1").zone("b"));
    let r = client(&kubeconfig, &[]);
    assert_eq!((r.errors, r.share(&b_addr)), (0, 1.0), "{r:?}");

    let _ = std::fs::remove_file(&kubeconfig);
    drop(double);
}
