//! `greeter-client`: sends SayHello calls through an `LbChannel` and reports where they went.
//!
//! ```text
//! greeter-client --target TARGET (--requests N | --duration-secs S) --concurrency C
//!                --policy rr|wrr|p2c|p2c-ewma|hash|maglev|wrr-orca|p2c-util [--zone Z] [--region R] [--node N]
//!                [--blackout-secs S] [--weight-update-ms MS] [--metrics-addr HOST:PORT [--metrics-endpoint-labels]]
//!                [--retries N] [--retry-budget RATIO|none] [--hedge-after-ms D | --hedge-after pNN]
//!                [--hedge-attempts N] [--max-in-flight N]
//! ```
//!
//! `--retries N` re-sends a call answered `UNAVAILABLE` up to N more times (gRFC A6, at most 4),
//! each time to a backend the call has not tried yet; `--retry-budget` bounds the retries and
//! hedges of all calls together (default 0.2: a fifth of the recent calls plus 10 per second;
//! `none` for no budget). `--hedge-after-ms D` sends another attempt of a call still unanswered
//! after D ms, to another backend (`--hedge-after p95`: after the target's recent p95 latency),
//! up to `--hedge-attempts` attempts in all (default 2); the first answer wins and the others are
//! cancelled. `--max-in-flight N` fails calls beyond N in flight at once with
//! `RESOURCE_EXHAUSTED` (circuit breaking).
//!
//! With `--metrics-addr` it serves lb's metrics (`lb_core::metrics`) as Prometheus text at
//! `/metrics` while it runs.
//!
//! With `--policy hash`, call i carries the affinity key `key-<i mod --keys>` in the `x-lb-key`
//! metadata (`LbChannel::builder().hash_header("x-lb-key")`).
//!
//! Its last stdout line is exactly one JSON object:
//! `{"requests":N,"attempts":N,"ok":N,"errors":N,"per_backend":{"ip:port":count,...},"p50_ms":x,"p99_ms":y}`,
//! `per_backend` keyed by the address each reply names, `attempts` the requests the balancer sent
//! to backends (retries and hedges included; calls refused before any send count none). Logs go to stderr. Before sending it waits
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
    /// Re-send a call answered UNAVAILABLE up to this many more times (0 to 4), each to a backend
    /// the call has not tried.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=4))]
    retries: u32,
    /// The retry budget shared by every call: a ratio of the recent calls (plus 10 per second),
    /// or `none`.
    #[arg(long, default_value = "0.2", value_parser = parse_budget)]
    retry_budget: lb_tonic::RetryBudget,
    /// Hedge: send another attempt of a call still unanswered after this many milliseconds.
    #[arg(long, conflicts_with = "hedge_after")]
    hedge_after_ms: Option<u64>,
    /// Hedge after the target's recent latency percentile, e.g. p95 or p99.
    #[arg(long, value_parser = parse_percentile)]
    hedge_after: Option<f64>,
    /// With hedging: attempts per call in all, the first included (2 to 5).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=5))]
    hedge_attempts: u32,
    /// Circuit breaking: fail calls beyond this many in flight at once with RESOURCE_EXHAUSTED.
    #[arg(long)]
    max_in_flight: Option<usize>,
}

fn parse_budget(s: &str) -> Result<lb_tonic::RetryBudget, String> {
    if s == "none" {
        return Ok(lb_tonic::RetryBudget::unlimited());
    }
    let ratio: f32 = s.parse().map_err(|_| format!("expected a ratio such as 0.2, or `none`, got `{s}`"))?;
    let budget = lb_tonic::RetryBudget::ratio(ratio);
    budget.validate()?;
    Ok(budget)
}

fn parse_percentile(s: &str) -> Result<f64, String> {
    let n: f64 = s
        .strip_prefix('p')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("expected a percentile such as p95 or p99.9, got `{s}`"))?;
    if !(n > 0.0 && n < 100.0) {
        return Err(format!("the percentile must be between p0 and p100, got `{s}`"));
    }
    Ok(n / 100.0)
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
    let hedge_delay = match (args.hedge_after_ms, args.hedge_after) {
        (Some(ms), _) => Some(lb_tonic::HedgeDelay::Fixed(Duration::from_millis(ms))),
        (None, Some(q)) => Some(lb_tonic::HedgeDelay::percentile(q)),
        (None, None) => None,
    };
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
    builder = builder.retry_budget(args.retry_budget);
    if args.retries > 0 {
        builder = builder.retry(lb_tonic::RetryPolicy::new(args.retries + 1));
    }
    if let Some(delay) = hedge_delay {
        // Failures a hedge can outrun: the next attempt goes at once, the call waits for the rest.
        let non_fatal = lb_tonic::grpc_codes([tonic::Code::Unavailable]);
        builder = builder.hedge(lb_tonic::HedgePolicy::new(args.hedge_attempts, delay).non_fatal(non_fatal));
    }
    if let Some(n) = args.max_in_flight {
        anyhow::ensure!(n > 0, "--max-in-flight must be at least 1");
        builder = builder.max_in_flight(n);
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

    // Requests each backend was sent before the run (none: the warm-up only connects).
    let sent_before: u64 = channel.endpoints().iter().map(|e| e.requests).sum();
    let client = GreeterClient::new(channel.clone());
    let name = args.name;
    let keys = args.keys;
    let mut report = load::run(budget, args.concurrency, move |i| {
        let mut client = client.clone();
        let mut request = tonic::Request::new(HelloRequest { name: name.clone() });
        // SayHello is idempotent: safe to hedge (hedging applies only with --hedge-after*).
        request.extensions_mut().insert(lb_tonic::Hedgeable);
        if hashing {
            let key = format!("key-{}", i % keys);
            request
                .metadata_mut()
                .insert(HASH_HEADER, key.parse().expect("`key-<n>` is valid ASCII metadata"));
        }
        async move { client.say_hello(request).await }
    })
    .await;
    // Backends removed during the run take their counts with them: with a changing set this is
    // a lower bound.
    let sent_after: u64 = channel.endpoints().iter().map(|e| e.requests).sum();
    report.attempts = Some(sent_after.saturating_sub(sent_before));
    tracing::info!(requests = report.requests, attempts = ?report.attempts, ok = report.ok, errors = report.errors, "done");
    Ok(report)
}
