//! `lb-report`: one command that starts everything on loopback, measures lb against its baselines
//! side by side, and writes `bench/REPORT.md` with tables and SVG charts.
//!
//! ```text
//! cargo run --release -p lb-bench --bin lb-report -- --out bench/REPORT.md     # full run, a few minutes
//! cargo run -p lb-bench --bin lb-report -- --quick --out /tmp/r/REPORT.md      # harness check, < 60 s
//! ```
//!
//! The claim under test is the in-process design's: no extra hop (vs nginx as a central gRPC
//! proxy), even load per request (vs an L4 connection balancer), slow backends avoided (P2C
//! PeakEWMA, after Finagle and linkerd), and fast recovery when a backend dies. Every figure is
//! reported next to its baseline from the same run, as a ratio, because the machine is shared
//! (2 cores running client, backends and proxy) and absolute numbers are noise.

mod churn;
mod drive;
mod l4;
mod netns;
mod orca;
mod overload;
mod procs;
mod scenarios;
mod svg;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};


/// Fleet-scale figures come from the simulator, in a report of their own that lb-report links to
/// (and never writes).
const SIM_LINK: &str = "Fleet-scale behaviour — 10,000 clients × 1,000 backends with subsetting, a tenth of the backends \
at half speed, a rolling deploy, a zone failure, and what lb's structures cost as the fleet grows — is simulated in \
virtual time with lb-core's own policies and pools by `lb-sim` and reported in [SIM.md](SIM.md).";

#[derive(Debug, Parser)]
#[command(name = "lb-report", about = "Benchmark and fault report for lb; writes markdown and SVG charts")]
struct Args {
    /// A short run that proves the harness works (the test suite uses it); numbers are noise.
    #[arg(long)]
    quick: bool,
    /// Where to write the report; the SVG charts go next to it.
    #[arg(long, default_value = "bench/REPORT.md")]
    out: PathBuf,
    /// Run only these scenarios (1–9, comma-separated); the report then has only their sections.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Internal: run one greeter backend until killed (the report starts these as processes).
    #[command(hide = true)]
    Backend {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 0)]
        delay_us: u64,
        #[arg(long)]
        capacity: Option<usize>,
        #[arg(long)]
        orca: bool,
        #[arg(long, default_value_t = 0.0)]
        fail_fraction: f64,
        #[arg(long, default_value_t = 0.0)]
        tail_fraction: f64,
        #[arg(long, default_value_t = 0)]
        tail_us: u64,
    },
    /// Internal: scenario 6's client processes: closed-loop calls with one policy, one JSON line.
    #[command(hide = true)]
    LoadClient {
        #[arg(long)]
        target: String,
        #[arg(long)]
        policy: String,
        #[arg(long)]
        concurrency: usize,
        #[arg(long)]
        secs: f64,
        #[arg(long)]
        warmup_ms: u64,
        #[arg(long, default_value_t = 1.0)]
        blackout_secs: f64,
    },
    /// Internal: scenario 2's client side, run inside the client network namespace.
    #[command(hide = true)]
    NetnsClient {
        /// lb-agent's configuration (the VIP and its backends).
        #[arg(long)]
        agent_config: PathBuf,
        /// The backends' addresses, for the per-request contenders.
        #[arg(long, value_delimiter = ',')]
        backends: Vec<SocketAddr>,
        #[arg(long)]
        secs: f64,
        #[arg(long)]
        warmup_ms: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Cmd::Backend { listen, delay_us, capacity, orca, fail_fraction, tail_fraction, tail_us }) = args.command {
        // A backend is one process with a small runtime, like a single small service instance.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("runtime")?;
        let shape = procs::Shape {
            capacity,
            orca,
            fail_fraction,
            tail_fraction,
            tail_delay: Duration::from_micros(tail_us),
        };
        return rt.block_on(procs::serve_backend(listen, Duration::from_micros(delay_us), shape));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("runtime")?;
    if let Some(Cmd::LoadClient { target, policy, concurrency, secs, warmup_ms, blackout_secs }) = args.command {
        let run = orca::LoadRun { target, policy, concurrency, secs, warmup_ms, blackout_secs };
        return rt.block_on(orca::load_client(run));
    }
    if let Some(Cmd::NetnsClient { agent_config, backends, secs, warmup_ms }) = args.command {
        let s = scenarios::Settings { secs, warmup: Duration::from_millis(warmup_ms), ..scenarios::Settings::quick() };
        return rt.block_on(l4::netns_client(&agent_config, &backends, s));
    }
    rt.block_on(report(args.quick, args.out, &args.only))
}

async fn report(quick: bool, out: PathBuf, only: &[u32]) -> anyhow::Result<()> {
    let settings = if quick { scenarios::Settings::quick() } else { scenarios::Settings::full() };
    let started = std::time::Instant::now();
    let mut sections = Vec::new();
    let run = |n: u32| only.is_empty() || only.contains(&n);
    if run(1) {
        eprintln!("scenario 1: nginx vs LbChannel vs balance_list vs direct");
        sections.push(scenarios::centralized(settings).await.context("scenario 1")?);
    }
    if run(2) {
        eprintln!("scenario 2: L4 vs per-request");
        sections.push(l4::l4(settings).await.context("scenario 2")?);
    }
    if run(3) {
        eprintln!("scenario 3: slow backend");
        sections.push(scenarios::slow(settings).await.context("scenario 3")?);
    }
    if run(4) {
        eprintln!("scenario 4: etcd churn and etcd restart");
        sections.push(churn::churn(settings).await.context("scenario 4")?);
    }
    if run(5) {
        eprintln!("scenario 5: backend SIGKILL");
        sections.push(scenarios::faults(settings).await.context("scenario 5")?);
    }
    if run(6) {
        eprintln!("scenario 6: load reports (ORCA) over unequal capacities");
        sections.push(orca::capacities(settings).await.context("scenario 6")?);
    }
    if run(7) {
        eprintln!("scenario 7: retry storm, with and without a retry budget");
        sections.push(overload::retry_storm(settings).await.context("scenario 7")?);
    }
    if run(8) {
        eprintln!("scenario 8: hedging against a latency tail");
        sections.push(overload::hedging(settings).await.context("scenario 8")?);
    }
    if run(9) {
        eprintln!("scenario 9: a stalled backend, with and without circuit breaking");
        sections.push(overload::stalled(settings).await.context("scenario 9")?);
    }
    let took = started.elapsed();

    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut md = String::new();
    let _ = writeln!(md, "# lb benchmark and fault report\n");
    let _ = writeln!(
        md,
        "Generated by `lb-report{}` (crate `bench/`, `cargo run --release -p lb-bench --bin lb-report`) in {:.0} s on a \
         machine with {} CPU core(s). Client, backends and proxies all run on this machine on 127.0.0.1, so they compete \
         for the same cores: **read the ratios, not the absolute numbers.**{}\n",
        if quick { " --quick" } else { "" },
        took.as_secs_f64(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        if quick { " This is a `--quick` run: it proves the harness, its numbers are noise." } else { "" }
    );
    let _ = writeln!(md, "{SIM_LINK}\n");
    let _ = writeln!(md, "## Headlines\n");
    for s in &sections {
        for h in &s.headlines {
            let _ = writeln!(md, "- {h}");
        }
    }
    let _ = writeln!(md);
    for s in &sections {
        let _ = writeln!(md, "## {}\n\n{}", s.title, s.body);
        for (file, svg) in &s.charts {
            std::fs::write(dir.join(file), svg).with_context(|| format!("write {file}"))?;
        }
    }
    std::fs::write(&out, md).with_context(|| format!("write {}", out.display()))?;
    eprintln!("wrote {} in {:.0} s", out.display(), took.as_secs_f64());
    Ok(())
}
