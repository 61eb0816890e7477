//! `quickstart`: why gRPC needs per-request balancing, shown in one command.
//!
//! ```text
//! cargo run -p lb-examples --bin quickstart [-- --quick] [-- --json]
//! ```
//!
//! Starts four greeter backends in this process (two in zone-a, two in zone-b, one of them slow),
//! then sends the same closed-loop load five ways and shows where the calls went:
//!
//! 1. a plain tonic `Channel` through an in-process L4 balancer that balances *connections* round
//!    robin, as kube-proxy does — HTTP/2 puts every call on one connection, so one backend gets all;
//! 2. tonic's own `Channel::balance_list` — per request, but its P2C sees a load of 0 everywhere,
//!    so it picks at random and the slow backend keeps its share;
//! 3. lb's `LbChannel` with per-request round robin — even, but the slow backend drags p99;
//! 4. `LbChannel` with P2C PeakEWMA (the default) — the slow backend is avoided;
//! 5. `LbChannel` with the caller in zone-a — same-zone backends take the traffic.
//!
//! Nothing to install: the protobuf code is generated without `protoc`, and everything listens on
//! 127.0.0.1 ephemeral ports. `--quick` shortens the run (the test suite uses it); `--json` adds one
//! machine-readable line at the end.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lb_core::policy::{P2c, RoundRobin};
use lb_core::{Locality, Policy};
use lb_examples::l4::L4Balancer;
use lb_examples::load::{self, Budget, Report};
use lb_examples::pb::greeter_client::GreeterClient;
use lb_examples::pb::HelloRequest;
use lb_examples::server::Backend;
use lb_examples::table::{self, BackendInfo, Run, Style};
use lb_tonic::LbChannel;
use serde::Serialize;
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(name = "quickstart", about = "Shows per-request balancing against an L4 connection balancer")]
struct Args {
    /// A shorter run (fewer calls per scenario), as the test suite uses.
    #[arg(long)]
    quick: bool,
    /// Also print one JSON line with every scenario's report at the end.
    #[arg(long)]
    json: bool,
}

/// The caller's zone in scenario 4.
const CALLER_ZONE: &str = "zone-a";

/// The backends: label, zone, delay.
const BACKENDS: [(&str, &str, u64); 4] = [("a1", "zone-a", 0), ("a2", "zone-a", 0), ("b1", "zone-b", 0), ("b2", "zone-b", 1)];

struct Settings {
    calls: u64,
    concurrency: usize,
    slow_ms: u64,
}

#[derive(Serialize)]
struct JsonBackend<'a> {
    label: &'a str,
    addr: &'a str,
    zone: &'a str,
    delay_ms: u64,
}

#[derive(Serialize)]
struct JsonScenario<'a> {
    key: &'a str,
    title: &'a str,
    report: &'a Report,
    elapsed_ms: u64,
}

/// One finished scenario.
struct Scenario {
    key: &'static str,
    short: &'static str,
    title: &'static str,
    report: Report,
    elapsed: Duration,
}

impl Scenario {
    fn run(&self) -> Run<'_> {
        Run { report: &self.report, elapsed: self.elapsed }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lb_examples::init_logging("warn");
    let args = Args::parse();
    match run(args).await {
        // `quickstart | head` closes stdout early: that is the reader's choice, not an error.
        Err(e) if lb_examples::is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let settings = if args.quick {
        Settings { calls: 300, concurrency: 6, slow_ms: 80 }
    } else {
        // Few enough callers that a debug build on a busy laptop is not CPU-bound, so what the
        // numbers show is the balancing, not the scheduler.
        Settings { calls: 2000, concurrency: 8, slow_ms: 50 }
    };
    let style = Style::detect();
    let started = Instant::now();

    // The backends: real tonic servers on 127.0.0.1 ephemeral ports.
    let mut backends = Vec::new();
    let mut infos = Vec::new();
    for (label, zone, slow) in BACKENDS {
        let delay_ms = slow * settings.slow_ms;
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let backend = Backend::bind(any_port, Duration::from_millis(delay_ms))
            .await
            .context("cannot start a greeter backend on 127.0.0.1")?;
        infos.push(BackendInfo {
            label: label.to_string(),
            addr: backend.addr().to_string(),
            zone: zone.to_string(),
            delay_ms,
        });
        backends.push(backend);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    // Zones travel with the endpoints, as a registry (etcd, Consul, EndpointSlices) would carry them.
    let target = format!(
        "static:///{}",
        infos.iter().map(|b| format!("{};zone={}", b.addr, b.zone)).collect::<Vec<_>>().join(",")
    );

    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(out, "{}", style_title(style, "lb quickstart: where do gRPC calls go?"))?;
    writeln!(
        out,
        "{} greeter backends on 127.0.0.1; each scenario sends {} SayHello calls from {} concurrent callers.",
        infos.len(),
        settings.calls,
        settings.concurrency
    )?;
    writeln!(out)?;
    write!(out, "{}", table::render_backends(&infos, style))?;
    writeln!(out)?;
    out.flush()?;
    drop(out);

    let budget = Budget::Requests(settings.calls);
    let mut results: Vec<Scenario> = Vec::new();

    // 1. A plain tonic Channel through an L4 (connection) balancer.
    let l4 = L4Balancer::start(SocketAddr::from(([127, 0, 0, 1], 0)), addrs.clone())
        .await
        .context("cannot start the L4 balancer")?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", l4.addr()))
        .context("the L4 balancer's address is a valid URI")?
        .connect()
        .await
        .context("cannot connect through the L4 balancer")?;
    let (report, elapsed) = send_load(GreeterClient::new(channel), budget, settings.concurrency).await;
    let connections = l4.connections();
    let (top, top_share) = busiest(&infos, &report);
    let idle = infos.iter().filter(|b| report.share(&b.addr) == 0.0).count();
    let opened = connections.iter().sum::<u64>();
    let finding = format!(
        "{top} answered {:.0}% of calls and {idle} of {} backends sat idle: tonic sent every call over \
         {opened} HTTP/2 connection{}, and an L4 balancer picks a backend per connection, not per call.",
        top_share * 100.0,
        infos.len(),
        if opened == 1 { "" } else { "s" },
    );
    results.push(Scenario {
        key: "l4",
        short: "L4 connection balancer",
        title: "Plain tonic Channel through an L4 connection balancer (kube-proxy style)",
        report,
        elapsed,
    });
    print_scenario(style, &infos, &results, &finding)?;
    drop(l4);

    // 2. tonic's own balancer: per request, but its P2C compares loads that are always zero.
    let endpoints = addrs
        .iter()
        .map(|a| tonic::transport::Endpoint::from_shared(format!("http://{a}")))
        .collect::<Result<Vec<_>, _>>()
        .context("backend addresses are valid URIs")?;
    let channel = tonic::transport::Channel::balance_list(endpoints.into_iter());
    let (report, elapsed) = send_load(GreeterClient::new(channel), budget, settings.concurrency).await;
    let slow = slow_backend(&infos);
    let finding = format!(
        "per request, but blind: the slow {} still got {:.0}% of calls. tonic's balancer is tower's P2C \
         over connections whose load is always 0, so every pick is a coin toss.",
        slow.label,
        report.share(&slow.addr) * 100.0,
    );
    results.push(Scenario {
        key: "tonic-balance-list",
        short: "tonic balance_list",
        title: "tonic's own Channel::balance_list",
        report,
        elapsed,
    });
    print_scenario(style, &infos, &results, &finding)?;

    // 3. Per-request round robin.
    let (report, elapsed) = run_lb(&target, RoundRobin::new(), None, budget, settings.concurrency).await?;
    let finding = format!(
        "even: every backend got {}. But one call in {} waits for the slow {}, which drags p99 \
         and holds up the callers.",
        spread(&infos, &report),
        infos.len(),
        slow.label
    );
    results.push(Scenario {
        key: "rr",
        short: "round robin",
        title: "lb LbChannel, round robin per request",
        report,
        elapsed,
    });
    print_scenario(style, &infos, &results, &finding)?;

    // 4. P2C PeakEWMA.
    let (report, elapsed) = run_lb(&target, P2c::peak_ewma(), None, budget, settings.concurrency).await?;
    let rr = results.iter().find(|s| s.key == "rr").expect("round robin ran before");
    let speedup = rr.elapsed.as_secs_f64() / elapsed.as_secs_f64().max(1e-9);
    let mut finding = format!(
        "the slow {} got {:.1}% of calls: its latency estimate keeps it out of most picks",
        slow.label,
        report.share(&slow.addr) * 100.0,
    );
    // Claim only what this run measured: on a saturated machine the CPU, not the slow backend,
    // may be what limits throughput.
    if speedup >= 1.2 {
        finding += &format!(", so the same calls finished {speedup:.1}× faster than with round robin.");
    } else {
        finding += ".";
    }
    results.push(Scenario {
        key: "p2c-ewma",
        short: "P2C PeakEWMA",
        title: "lb LbChannel, power of two choices with PeakEWMA (the default policy)",
        report,
        elapsed,
    });
    print_scenario(style, &infos, &results, &finding)?;

    // 5. Topology-aware: the caller is in zone-a.
    let caller = Locality::unknown().with_zone(CALLER_ZONE);
    let (report, elapsed) = run_lb(&target, P2c::peak_ewma(), Some(caller), budget, settings.concurrency).await?;
    let local: f64 = infos.iter().filter(|b| b.zone == CALLER_ZONE).map(|b| report.share(&b.addr)).sum();
    let finding = format!(
        "{CALLER_ZONE} backends answered {:.0}% of calls: no cross-zone hops while {CALLER_ZONE} is healthy; \
         lb spills to other zones only as {CALLER_ZONE} loses backends (Envoy's priority levels).",
        local * 100.0
    );
    results.push(Scenario {
        key: "topology",
        short: "topology (caller in zone-a)",
        title: "lb LbChannel, topology-aware: the caller is in zone-a (PeakEWMA inside the zone)",
        report,
        elapsed,
    });
    print_scenario(style, &infos, &results, &finding)?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", style_title(style, "Side by side: share of calls per backend"))?;
    let rows: Vec<(&str, Run<'_>)> = results.iter().map(|s| (s.short, s.run())).collect();
    write!(out, "{}", table::render_summary(&infos, &rows, style))?;
    writeln!(out)?;
    writeln!(
        out,
        "Done in {:.1} s. Next: examples/README.md (greeter-server, greeter-client, registries).",
        started.elapsed().as_secs_f64()
    )?;
    if args.json {
        let json = serde_json::json!({
            "backends": infos.iter().map(|b| JsonBackend { label: &b.label, addr: &b.addr, zone: &b.zone, delay_ms: b.delay_ms }).collect::<Vec<_>>(),
            "scenarios": results.iter().map(|s| JsonScenario { key: s.key, title: s.title, report: &s.report, elapsed_ms: s.elapsed.as_millis() as u64 }).collect::<Vec<_>>(),
        });
        writeln!(out, "{json}")?;
    }
    out.flush()?;
    drop(out);

    for backend in backends {
        let _ = tokio::time::timeout(Duration::from_secs(1), backend.shutdown()).await;
    }
    Ok(())
}

fn style_title(style: Style, text: &str) -> String {
    table::render_title(text, style)
}

fn print_scenario(style: Style, infos: &[BackendInfo], results: &[Scenario], finding: &str) -> anyhow::Result<()> {
    let s = results.last().expect("a scenario was just pushed");
    let mut out = std::io::stdout().lock();
    write!(out, "{}", table::render_scenario(results.len(), s.title, infos, &s.run(), finding, style))?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

async fn send_load<T>(client: GreeterClient<T>, budget: Budget, concurrency: usize) -> (Report, Duration)
where
    GreeterClient<T>: Clone + Send + Sync + 'static,
    T: tonic::client::GrpcService<tonic::body::Body> + Send + 'static,
    T::Future: Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let started = Instant::now();
    let report = load::run(budget, concurrency, move |i| {
        let mut client = client.clone();
        async move { client.say_hello(HelloRequest { name: format!("caller-{i}") }).await }
    })
    .await;
    (report, started.elapsed())
}

async fn run_lb(
    target: &str,
    policy: impl Policy,
    caller: Option<Locality>,
    budget: Budget,
    concurrency: usize,
) -> anyhow::Result<(Report, Duration)> {
    let mut builder = LbChannel::builder().policy(policy);
    if let Some(caller) = caller {
        builder = builder.locality(caller);
    }
    let channel = builder.build_from_target(target).context("cannot build the LbChannel")?;
    // Let every connection come up first, so the first calls do not all land on whichever backend
    // answered the handshake first; a long-running client is in this state nearly all the time.
    // (An empty list is not "all healthy": right after `build` discovery may not have answered.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let endpoints = channel.endpoints();
        if Instant::now() >= deadline || (!endpoints.is_empty() && endpoints.iter().all(|e| e.healthy)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(send_load(GreeterClient::new(channel), budget, concurrency).await)
}

fn busiest<'a>(infos: &'a [BackendInfo], report: &Report) -> (&'a str, f64) {
    infos
        .iter()
        .map(|b| (b.label.as_str(), report.share(&b.addr)))
        .fold(("none", 0.0), |best, x| if x.1 > best.1 { x } else { best })
}

fn slow_backend(infos: &[BackendInfo]) -> &BackendInfo {
    infos
        .iter()
        .max_by_key(|b| b.delay_ms)
        .expect("the quickstart starts at least one backend")
}

/// "24–26% of calls": the smallest and largest share.
fn spread(infos: &[BackendInfo], report: &Report) -> String {
    let shares: Vec<f64> = infos.iter().map(|b| report.share(&b.addr) * 100.0).collect();
    let min = shares.iter().copied().fold(f64::INFINITY, f64::min);
    let max = shares.iter().copied().fold(0.0, f64::max);
    if format!("{min:.0}") == format!("{max:.0}") {
        format!("{min:.0}% of calls")
    } else {
        format!("{min:.0}–{max:.0}% of calls")
    }
}
