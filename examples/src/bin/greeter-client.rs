//! `greeter-client`: sends SayHello calls through an `LbChannel` and reports where they went.
//!
//! ```text
//! greeter-client --target TARGET (--requests N | --duration-secs S) --concurrency C
//!                --policy rr|wrr|p2c|p2c-ewma|hash|maglev|wrr-orca|p2c-util [--zone Z] [--region R] [--node N]
//!                [--blackout-secs S] [--weight-update-ms MS] [--metrics-addr HOST:PORT [--metrics-endpoint-labels]]
//! ```
//!
//! With `--metrics-addr` it serves lb's metrics (`lb_core::metrics`) as Prometheus text at
//! `/metrics` while it runs.
//!
//! With `--policy hash`, call i carries the affinity key `key-<i mod --keys>` in the `x-lb-key`
//! metadata (`LbChannel::builder().hash_header("x-lb-key")`).
//!
//! Its last stdout line is exactly one JSON object:
//! `{"requests":N,"ok":N,"errors":N,"per_backend":{"ip:port":count,...},"p50_ms":x,"p99_ms":y}`,
//! `per_backend` keyed by the address each reply names. Logs go to stderr. Before sending it waits
//! (at most `--warmup-ms`, default 1 s) until every discovered backend is connected. It exits 0 when at least
//! one call succeeded (a run with some errors is still a measurement), 1 when none did, 2 on bad
//! arguments.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Parser};
use lb_core::Locality;
use lb_examples::load::{self, Budget};
use lb_examples::pb::greeter_client::GreeterClient;
use lb_examples::pb::HelloRequest;
use lb_examples::policy::PolicyName;
use lb_tonic::LbChannel;

/// The metadata key that carries the affinity key under `--policy hash`.
const HASH_HEADER: &str = "x-lb-key";

#[derive(Debug, Parser)]
#[command(
    name = "greeter-client",
    about = "Sends SayHello calls through an lb LbChannel and prints one JSON line with where they went",
    group(ArgGroup::new("budget").required(true).args(["requests", "duration_secs"]))
)]
struct Args {
    /// Target URI: static:///127.0.0.1:50051,127.0.0.1:50052 (or etcd://, consul://, kubernetes:///
    /// when built with those features).
    #[arg(long)]
    target: String,
    /// Total number of calls.
    #[arg(long)]
    requests: Option<u64>,
    /// Send calls for this many seconds.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Concurrent callers (each waits for its reply before sending the next call).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Balancing policy.
    #[arg(long, default_value = "p2c-ewma", value_parser = parse_policy)]
    policy: PolicyName,
    /// The caller's zone: prefer backends in the same zone (topology-aware).
    #[arg(long)]
    zone: Option<String>,
    /// The caller's region: prefer backends in the same region.
    #[arg(long)]
    region: Option<String>,
    /// The caller's node: prefer backends on the same node.
    #[arg(long)]
    node: Option<String>,
    /// Check backends with grpc.health.v1 and skip those not SERVING.
    #[arg(long)]
    health_check: bool,
    /// The longest a call waits for a usable backend before failing with UNAVAILABLE, in
    /// milliseconds (`--failfast-ms` is its old name). While every backend refuses connections,
    /// calls fail at once instead.
    #[arg(long = "endpoint-wait-ms", alias = "failfast-ms", default_value_t = 3000)]
    endpoint_wait_ms: u64,
    /// Before sending, wait up to this long (milliseconds) for every discovered backend to
    /// connect, so the measurement starts from the steady state rather than from whichever
    /// backend answered its handshake first; 0 starts at once.
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// With --policy hash: call i carries the affinity key `key-<i mod N>` in the `x-lb-key`
    /// metadata, so 1 pins every call to one backend and a large N spreads them over the ring.
    #[arg(long, default_value_t = 1)]
    keys: u64,
    /// With --policy wrr-orca: seconds an endpoint must have reported load before its weight is
    /// used (gRFC A58's blackout period).
    #[arg(long, default_value_t = 10.0)]
    blackout_secs: f64,
    /// With --policy wrr-orca: how often weights are recomputed from the reports, in ms.
    #[arg(long, default_value_t = 1000)]
    weight_update_ms: u64,
    /// The name sent in every HelloRequest.
    #[arg(long, default_value = "world")]
    name: String,
    /// Serve lb's metrics at http://HOST:PORT/metrics while running (port 0 picks one; logged).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Label the per-attempt metrics with each backend's address.
    #[arg(long)]
    metrics_endpoint_labels: bool,
}

fn parse_policy(s: &str) -> Result<PolicyName, String> {
    s.parse().map_err(|e: lb_examples::policy::UnknownPolicy| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    lb_examples::init_logging("info");
    let args = Args::parse();
    load::finish("greeter-client", run(args).await)
}

async fn run(args: Args) -> anyhow::Result<load::Report> {
    let budget = match (args.requests, args.duration_secs) {
        (Some(n), _) => Budget::Requests(n),
        (None, Some(s)) if s.is_finite() && s >= 0.0 => Budget::Duration(Duration::from_secs_f64(s)),
        (None, Some(s)) => anyhow::bail!("--duration-secs must be a non-negative number of seconds, got {s}"),
        (None, None) => unreachable!("clap requires --requests or --duration-secs"),
    };
    let mut locality = Locality::unknown();
    if let Some(z) = &args.zone {
        locality = locality.with_zone(z);
    }
    if let Some(r) = &args.region {
        locality = locality.with_region(r);
    }
    if let Some(n) = &args.node {
        locality = locality.with_node(n);
    }
    // Before the channel: lb registers the target's series when its pool starts.
    if let Some(addr) = args.metrics_addr {
        lb_examples::metrics::serve(addr).await?;
    }
    let policy: std::sync::Arc<dyn lb_core::Policy> = match args.policy {
        PolicyName::WrrOrca => {
            let blackout = Duration::try_from_secs_f64(args.blackout_secs)
                .map_err(|_| anyhow::anyhow!("--blackout-secs must be a non-negative number of seconds"))?;
            std::sync::Arc::new(
                lb_core::policy::WeightedRoundRobin::from_load_reports()
                    .blackout_period(blackout)
                    .weight_update_period(Duration::from_millis(args.weight_update_ms)),
            )
        }
        other => other.build(),
    };
    let mut builder = LbChannel::builder()
        .metrics_endpoint_labels(args.metrics_endpoint_labels)
        .policy(policy)
        .endpoint_wait_timeout(Duration::from_millis(args.endpoint_wait_ms))
        .health_check(args.health_check);
    if locality != Locality::unknown() {
        builder = builder.locality(locality);
    }
    let hashing = args.policy.is_hashing();
    if hashing {
        builder = builder.hash_header(HASH_HEADER);
    }
    if args.keys == 0 {
        anyhow::bail!("--keys must be at least 1");
    }
    let channel = builder
        .build_from_target(&args.target)
        .with_context(|| format!("cannot use target `{}`", args.target))?;
    let warmup = Duration::from_millis(args.warmup_ms);
    let deadline = tokio::time::Instant::now() + warmup;
    loop {
        let endpoints = channel.endpoints();
        if !endpoints.is_empty() && endpoints.iter().all(|e| e.healthy) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            if !warmup.is_zero() {
                let ready = endpoints.iter().filter(|e| e.healthy).count();
                tracing::warn!(ready, discovered = endpoints.len(), "not every backend is ready; sending anyway");
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!(target_uri = %args.target, policy = %args.policy, concurrency = args.concurrency, ?budget, "sending");

    let client = GreeterClient::new(channel);
    let name = args.name;
    let keys = args.keys;
    let report = load::run(budget, args.concurrency, move |i| {
        let mut client = client.clone();
        let mut request = tonic::Request::new(HelloRequest { name: name.clone() });
        if hashing {
            let key = format!("key-{}", i % keys);
            request
                .metadata_mut()
                .insert(HASH_HEADER, key.parse().expect("`key-<n>` is valid ASCII metadata"));
        }
        async move { client.say_hello(request).await }
    })
    .await;
    tracing::info!(requests = report.requests, ok = report.ok, errors = report.errors, "done");
    Ok(report)
}
