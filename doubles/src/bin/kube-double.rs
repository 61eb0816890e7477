//! `kube-double [--addr 127.0.0.1:0] [--bearer-token TOKEN] [--kubeconfig PATH] [--slices FILE]`: runs the Kubernetes API
//! server double (EndpointSlices only; a test double, not the API server) until killed.
//!
//! The first line on stdout is the bound address, so a test that spawns it can read the port.
//! `--bearer-token` makes every request need that token (401 otherwise). `--kubeconfig` writes a
//! kubeconfig pointing at the double (with the token, when there is one), for `KUBECONFIG=PATH`. `--slices`
//! loads a JSON array of `discovery.k8s.io/v1` EndpointSlices (or an `EndpointSliceList`) at start;
//! afterwards any Kubernetes client can create, replace and delete slices (`kubectl create -f`).

use std::io::Write;
use std::net::SocketAddr;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use lb_doubles::kube::{DoubleConfig, KubeDouble};

fn usage() -> ! {
    eprintln!("usage: kube-double [--addr 127.0.0.1:0] [--bearer-token TOKEN] [--kubeconfig PATH] [--slices FILE]");
    std::process::exit(2)
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("kube-double: {what}: {e}");
    std::process::exit(1)
}

fn load_slices(path: &str) -> Vec<EndpointSlice> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| fail(&format!("cannot read {path}"), e));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| fail(&format!("{path} is not JSON"), e));
    let items = match v {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(mut list) => match list.remove("items") {
            Some(serde_json::Value::Array(items)) => items,
            _ => fail(path, "expected a JSON array of EndpointSlices or an EndpointSliceList"),
        },
        _ => fail(path, "expected a JSON array of EndpointSlices or an EndpointSliceList"),
    };
    items
        .into_iter()
        .map(|item| serde_json::from_value(item).unwrap_or_else(|e| fail(&format!("{path}: not an EndpointSlice"), e)))
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut config = DoubleConfig::default();
    let (mut kubeconfig, mut slices) = (None, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => config.addr = args.next().and_then(|a| a.parse::<SocketAddr>().ok()).unwrap_or_else(|| usage()),
            "--bearer-token" => config.bearer_token = Some(args.next().unwrap_or_else(|| usage())),
            "--kubeconfig" => kubeconfig = Some(args.next().unwrap_or_else(|| usage())),
            "--slices" => slices = load_slices(&args.next().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    let token = config.bearer_token.clone();
    let double = KubeDouble::start_with(config).await.unwrap_or_else(|e| fail("cannot bind", e));
    for s in slices {
        if s.metadata.name.as_deref().unwrap_or("").is_empty() {
            fail("--slices", "every EndpointSlice needs metadata.name");
        }
        double.apply(s);
    }
    if let Some(path) = kubeconfig {
        std::fs::write(&path, double.kubeconfig_with(token.as_deref(), None)).unwrap_or_else(|e| fail(&format!("cannot write {path}"), e));
    }
    let mut out = std::io::stdout().lock();
    // The address line is the contract with tests that spawn this binary.
    if writeln!(out, "{}", double.addr()).and_then(|()| out.flush()).is_err() {
        std::process::exit(1)
    }
    drop(out);
    let _ = tokio::signal::ctrl_c().await;
    drop(double);
}
