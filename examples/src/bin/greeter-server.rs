//! `greeter-server`: the canonical gRPC hello-world Greeter, naming its address in every reply.
//!
//! ```text
//! greeter-server --addr 127.0.0.1:0 [--zone Z] [--region R] [--node N] [--delay-ms D]
//!                [--capacity N] [--orca] [--fail-fraction F] [--tail-fraction F --tail-ms D]
//!                [--register TARGET --ttl-secs S] [--metrics-addr HOST:PORT]
//! ```
//!
//! The first line on stdout is the bound `ip:port` (so scripts and tests can start it on port 0),
//! printed once the server is serving and, with `--register`, registered; logs go to stderr. On
//! Ctrl-C or SIGTERM its last stdout line is `{"addr":"ip:port","calls":N}`: the calls it
//! received (answered, failed or cancelled), so a run can compare what clients sent with what
//! servers saw. It
//! serves `grpc.health.v1`. With `--register` it registers itself in the registry TARGET names
//! (`etcd://…/greeter`, `consul://…/greeter`) with its locality, keeps the registration alive, and
//! on Ctrl-C or SIGTERM reports NOT_SERVING, deregisters, keeps serving for `--drain-delay-ms`
//! (default 500) while clients catch up, then drains in-flight calls (at most 3 s).
//!
//! `--capacity N` plays a machine that serves at most N calls at once (the rest queue), each
//! taking `--delay-ms`; `--orca` reports its load in every response (ORCA's
//! `endpoint-load-metrics-bin` trailer): utilization = the busy share of its capacity, and its
//! calls per second.
//!
//! `--fail-fraction F` answers that share of calls `UNAVAILABLE` at once; `--tail-fraction F
//! --tail-ms D` makes that share of calls wait D ms more (a latency tail): a degraded service to
//! try retries, retry budgets and hedging against.
//!
//! With `--metrics-addr` it serves Prometheus text at `/metrics` there: gRFC A66's server call
//! metrics and, with `--register`, the registrar's.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use lb_core::{Endpoint, Locality};
use lb_examples::server::{Backend, Config};
use lb_registry::Target;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Parser)]
#[command(name = "greeter-server", about = "The gRPC hello-world Greeter, naming its address in every reply")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
    /// This instance's zone (topology.kubernetes.io/zone), advertised when registering.
    #[arg(long)]
    zone: Option<String>,
    /// This instance's region (topology.kubernetes.io/region), advertised when registering.
    #[arg(long)]
    region: Option<String>,
    /// This instance's node (kubernetes.io/hostname), advertised when registering.
    #[arg(long)]
    node: Option<String>,
    /// Artificial delay before every reply, in milliseconds (to play a slow backend).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Serve at most this many calls at once; the rest wait their turn.
    #[arg(long)]
    capacity: Option<usize>,
    /// Report load with ORCA in every response (utilization = busy share of --capacity, else the
    /// process's CPU; and calls per second).
    #[arg(long)]
    orca: bool,
    /// Answer this share of calls (0 to 1) with UNAVAILABLE at once.
    #[arg(long, default_value_t = 0.0)]
    fail_fraction: f64,
    /// This share of calls (0 to 1) waits --tail-ms more before its answer.
    #[arg(long, default_value_t = 0.0, requires = "tail_ms")]
    tail_fraction: f64,
    /// The extra wait of the calls in the tail, in milliseconds.
    #[arg(long)]
    tail_ms: Option<u64>,
    /// Register in this registry, e.g. etcd://127.0.0.1:2379/greeter or consul://127.0.0.1:8500/greeter.
    #[arg(long, value_name = "TARGET")]
    register: Option<String>,
    /// On shutdown, how long to keep serving after reporting NOT_SERVING and deregistering, so
    /// that clients learn the server is going before it stops taking new calls (the same reason
    /// Kubernetes pods get a preStop sleep), in milliseconds.
    #[arg(long, default_value_t = 500)]
    drain_delay_ms: u64,
    /// Registration TTL in seconds (the etcd lease / Consul TTL check), with --register.
    #[arg(long, requires = "register")]
    ttl_secs: Option<u64>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks one; logged).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lb_examples::init_logging("info");
    let args = Args::parse();
    // Parse the target before binding, so a typo fails fast without a half-started server.
    let target = args
        .register
        .as_deref()
        .map(|t| registration_target(t, args.ttl_secs))
        .transpose()?;
    if let Some(addr) = args.metrics_addr {
        lb_examples::metrics::serve(addr).await?;
    }

    let config = Config {
        delay: Duration::from_millis(args.delay_ms),
        capacity: args.capacity,
        orca: args.orca,
        fail_fraction: args.fail_fraction,
        tail_fraction: args.tail_fraction,
        tail_delay: Duration::from_millis(args.tail_ms.unwrap_or(0)),
    };
    config.validate().map_err(anyhow::Error::msg)?;
    let backend = Backend::bind_with(args.addr, config)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = backend.addr();
    tracing::info!(%addr, delay_ms = args.delay_ms, "greeter serving");

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

    let registration = match &target {
        Some(target) => {
            let instance = Endpoint::new(addr).with_locality(locality);
            let registration = lb_registry::register(target, instance)
                .await
                .with_context(|| format!("cannot register {addr} in {target}"))?;
            tracing::info!(%target, instance = registration.description(), "registered");
            Some(registration)
        }
        None => None,
    };
    // Listen for the signals before announcing the address: a SIGTERM sent by whoever read the
    // line must find the handler installed, not kill the process.
    let shutdown = shutdown_signal();
    // The address goes out only now, so whoever waits for this line gets a server that is serving
    // and, with --register, already discoverable.
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{addr}")?;
        out.flush()?;
    }

    shutdown.await;
    tracing::info!("shutting down");
    // Order matters: stop advertising first so clients route new requests elsewhere, then drain.
    backend.set_not_serving().await;
    if let Some(registration) = registration {
        registration.deregister().await;
        tracing::info!("deregistered");
    }
    tokio::time::sleep(Duration::from_millis(args.drain_delay_ms)).await;
    let received = backend.greeter().clone();
    // Idle HTTP/2 clients may keep their connections open after GOAWAY; do not wait on them forever.
    match tokio::time::timeout(DRAIN_TIMEOUT, backend.shutdown()).await {
        Ok(result) => result.context("server error")?,
        Err(_) => tracing::warn!(timeout = ?DRAIN_TIMEOUT, "connections still open after the drain timeout; exiting"),
    }
    // The summary line is for whoever still reads stdout; nobody reading it is no error.
    let summary = serde_json::json!({ "addr": addr.to_string(), "calls": received.received() });
    let mut out = std::io::stdout().lock();
    if let Err(error) = writeln!(out, "{summary}").and_then(|()| out.flush()) {
        tracing::warn!(%error, "cannot print the summary line");
    }
    Ok(())
}

/// The registration target, with `--ttl-secs` added as the `ttl` query parameter the registry
/// providers read (a `ttl` already in the URI wins).
fn registration_target(target: &str, ttl_secs: Option<u64>) -> anyhow::Result<Target> {
    let parsed = Target::parse(target).with_context(|| format!("invalid --register target `{target}`"))?;
    match ttl_secs {
        Some(ttl) if parsed.param("ttl").is_none() => {
            let sep = if target.contains('?') { '&' } else { '?' };
            Ok(Target::parse(&format!("{target}{sep}ttl={ttl}"))?)
        }
        _ => Ok(parsed),
    }
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::terminate())
            .map_err(|error| tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server"))
            .ok()
    };
    // `ctrl_c` installs its handler on first poll: poll it once now.
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let already = futures_util::FutureExt::now_or_never(&mut ctrl_c).is_some();
    async move {
        if already {
            return;
        }
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = ctrl_c.await;
    }
}
