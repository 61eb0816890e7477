//! Runnable examples of lb, built around the canonical gRPC hello-world service.
//!
//! The binaries (`greeter-server`, `greeter-client`, `quickstart`) share this small library:
//!
//! - [`pb`]: the `helloworld` messages, client and server, generated at build time from
//!   `proto/helloworld.proto` with `protox` + `tonic-prost-build`, so no system `protoc` is needed;
//! - [`server`]: a greeter that names its own address in every reply and serves `grpc.health.v1`;
//! - [`load`]: a bounded closed-loop load generator and its JSON [`load::Report`];
//! - [`l4`]: an in-process TCP proxy that balances *connections* round robin, as kube-proxy does —
//!   the baseline that shows why gRPC needs per-request balancing;
//! - [`metrics`]: `--metrics-addr`, Prometheus text at `/metrics`;
//! - [`policy`]: the `--policy` names of the command-line tools;
//! - [`table`]: the quickstart's terminal table.
//!
//! Everything here is example code: it favours being easy to read over being general.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod l4;
pub mod load;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod table;

/// The generated `helloworld` protobuf messages, `GreeterClient` and `GreeterServer`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("helloworld");
}

/// Logs to stderr at `default_level` unless `RUST_LOG` says otherwise, with colours only when
/// stderr is a terminal (a log file or a pipe gets plain text, not escape codes).
pub fn init_logging(default_level: &str) {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into()),
        )
        .init();
}

/// True when `error` is (or wraps) a write to a closed pipe, e.g. output piped into `head`.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
