//! `tower-stack`: lb's engine assembled by hand from Tower layers, over the greeter backends.
//!
//! ```text
//! tower-stack --target TARGET --requests N --concurrency C [--endpoint-timeout-ms MS] [--limit L]
//! ```
//!
//! `LbChannel` is one way to run lb's request engine; this is the other: the same layers composed
//! with `tower::ServiceBuilder` over a per-endpoint service of your own. Here each endpoint gets its
//! own plain tonic `Channel` wrapped in a per-endpoint `tower::timeout`, lb's discovery → pool →
//! balance layers pick an endpoint per call (P2C PeakEWMA, load counted to the end of the response
//! body), and a `tower::limit::ConcurrencyLimit` around the balancer caps the calls in flight. The
//! generated `GreeterClient` takes the stack as it takes a channel.
//!
//! Its last stdout line is the same JSON object as `greeter-client`'s:
//! `{"requests":N,"ok":N,"errors":N,"per_backend":{"ip:port":count,...},"p50_ms":x,"p99_ms":y}`.
//! It exits 0 when at least one call succeeded, 1 when none did, 2 on bad arguments.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lb_core::balance::BalanceLayer;
use lb_core::pool::{connect_fn, Connected, PoolLayer};
use lb_core::{BoxError, Endpoint, Options};
use lb_examples::load::{self, Budget};
use lb_examples::pb::greeter_client::GreeterClient;
use lb_examples::pb::HelloRequest;
use lb_hyper::TrackBody;
use lb_registry::Discovery;
use tower::ServiceBuilder;

#[derive(Debug, Parser)]
#[command(
    name = "tower-stack",
    about = "Sends SayHello calls through lb's engine built from Tower layers; prints one JSON line with where they went"
)]
struct Args {
    /// Target URI: static:///127.0.0.1:50051,127.0.0.1:50052 (or etcd://, consul://, kubernetes:///
    /// when built with those features).
    #[arg(long)]
    target: String,
    /// Total number of calls.
    #[arg(long)]
    requests: u64,
    /// Concurrent callers (each waits for its reply before sending the next call).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The per-endpoint timeout (a `tower::timeout` inside each endpoint's service), milliseconds.
    #[arg(long, default_value_t = 2000)]
    endpoint_timeout_ms: u64,
    /// Calls in flight at once through the balancer (a `tower::limit::ConcurrencyLimit` around it).
    #[arg(long, default_value_t = 64)]
    limit: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    lb_examples::init_logging("info");
    let args = Args::parse();
    load::finish("tower-stack", run(args).await)
}

async fn run(args: Args) -> anyhow::Result<load::Report> {
    let discovery = Discovery::new(&args.target).with_context(|| format!("cannot use target `{}`", args.target))?;
    let timeout = Duration::from_millis(args.endpoint_timeout_ms);

    // One endpoint's service: a tonic channel of its own, with a per-endpoint timeout inside.
    let connector = connect_fn(move |endpoint: &Endpoint| {
        let uri = format!("http://{}", endpoint.addr());
        async move {
            let channel = tonic::transport::Endpoint::from_shared(uri)?.tcp_nodelay(true).connect().await?;
            let svc = ServiceBuilder::new().timeout(timeout).service(channel);
            Ok::<_, BoxError>(Connected::without_close_signal(svc))
        }
    });

    // The stack: a concurrency limit around the balancer, which picks per call from the pool.
    let stack = ServiceBuilder::new()
        .concurrency_limit(args.limit)
        .layer(BalanceLayer::new().track(TrackBody::grpc()))
        .layer(PoolLayer::new(&args.target, discovery, Options::new())?)
        .service(connector);

    let client = GreeterClient::new(stack);
    let report = load::run(Budget::Requests(args.requests), args.concurrency, move |_| {
        let mut client = client.clone();
        async move { client.say_hello(HelloRequest { name: "tower".into() }).await }
    })
    .await;
    tracing::info!(requests = report.requests, ok = report.ok, errors = report.errors, "done");
    Ok(report)
}
